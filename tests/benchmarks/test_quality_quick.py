"""quality_embedded --quick on the tiny model: the trainer runs, LoRAs export, the table, JSON
and plot are written with finite metrics for every method and step count."""

import json
import math

import pytest

from benchmarks.quality_embedded import BASELINE, TEACHER, TEACHER_CFG1, TSCD, TSCD_PER_STEP, main


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quality_quick_end_to_end(tmp_path):
    out = tmp_path / "q.json"
    assert (
        main(
            [
                "--quick",
                "--model",
                "tiny",
                "--eval-seeds",
                "1",
                "--methods",
                f"{TSCD};{BASELINE}",
                "--work",
                str(tmp_path / "work"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    for key in ("cpu_model", "cpu_cores", "torch", "date_utc", "git_commit"):
        assert res["machine"][key] not in (None, "")
    assert set(res["rows"]) == {TEACHER, TEACHER_CFG1, TSCD, BASELINE, TSCD_PER_STEP}
    assert set(res["rows"][TEACHER]) == {"1", "2", "4"} and set(res["rows"][TEACHER_CFG1]) == {"1", "2"}
    assert set(res["rows"][TSCD_PER_STEP]) == {"8", "4", "2", "1"}  # each stage's LoRA at its own steps
    for method in (TSCD, BASELINE):
        rows = res["rows"][method]
        assert set(rows) == {"1", "2"}
        for k, r in rows.items():
            assert r["nfe"] == int(k)
            for metric in ("frechet", "frechet_teacher", "adherence", "adherence_reward", "trajectory_error"):
                assert finite(r[metric]["mean"]) and finite(r[metric]["std"])
                assert len(r[metric]["values"]) == 1
            assert 0.0 <= r["adherence"]["mean"] <= 1.0
            assert r["trajectory_error"]["mean"] > 0  # a 1-2 step student is not the 4-step reference
    assert res["rows"]["teacher DDIM"]["4"]["trajectory_error"]["mean"] == 0.0  # the reference itself
    # same budget: the baseline's one stage has as many optimizer steps as the TSCD stages together
    runs = {m: r[0] for m, r in res["runs"].items()}
    assert runs[BASELINE]["optimizer_steps"] == runs[TSCD]["optimizer_steps"]
    assert runs[BASELINE]["batch_size"] == runs[TSCD]["batch_size"]
    assert [s["segments"] for s in res["stages"][TSCD]] == [8, 4, 2, 1]
    assert [s["segments"] for s in res["stages"][BASELINE]] == [1]
    assert set(res["verdict"][TSCD]) == {"1", "2"}
    # every student row is compared with the teacher at equal model calls (1 call: cfg 1; 2 calls: 1 step cfg 3)
    eq = res["equal_calls"][TSCD]
    assert eq["1"]["teacher"] == "teacher DDIM 1 cfg 1" and eq["2"]["teacher"] == "teacher DDIM 1 cfg 3"
    assert set(eq["2"]["lora_wins"]) == {"trajectory_error", "frechet_teacher", "adherence"}
    md = out.with_suffix(".md").read_text()
    assert TSCD in md and BASELINE in md and "QUICK MODE" in md and "teacher at equal calls" in md
    assert out.with_suffix(".png").stat().st_size > 1000


def test_stage_steps_set_each_stage_and_the_baseline_gets_their_sum():
    from benchmarks.quality_embedded import base_config, baseline_stage, tscd_stages

    data = base_config("embedded", quick=False)
    stages = tscd_stages(data, quick=False, steps=[50, 50, 200, 100])
    assert [(s["segments"], s["steps"]) for s in stages] == [(8, 50), (4, 50), (2, 200), (1, 100)]
    assert baseline_stage(stages)["steps"] == 400
    assert [s["steps"] for s in tscd_stages(data, quick=False, steps=100)] == [100] * 4


@pytest.mark.parametrize(
    "value, says",
    [("50,50,200", "needs 4 counts"), ("50,x,1,1", "positive integers"), ("50,0,1,1", "at least one step")],
)
def test_bad_stage_steps_is_one_line(value, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--stage-steps", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "Traceback" not in "\n".join(err)


def test_another_embedded_teacher_trains_and_is_judged_by_its_layout(tmp_path):
    out = tmp_path / "q.json"
    args = ["--quick", "--embedded", "polarity", "--methods", "TSCD 8-4-2-1", "--eval-seeds", "1", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "embedded polarity" and res["data_layout"] == "polarity"
    assert list(res["stages"]) == ["TSCD 8-4-2-1"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--embedded", "nosuch"], "--embedded 'nosuch'"),
        (["--model", "tiny", "--embedded", "polarity"], "--model embedded"),
    ],
)
def test_bad_embedded_teacher_is_one_line(args, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "Traceback" not in "\n".join(err)
