"""equal_calls_large_n_embedded pairs each LoRA row with the teacher at the same model calls and
reports wins and the adherence gap; checked with a stand-in evaluator (the real one needs runs)."""

import json

import pytest

from benchmarks import equal_calls_large_n_embedded as eq


class FakeEvaluator:
    """Scores that depend on the LoRA (None: the teacher), steps, cfg and eta."""

    calls: list = []
    paths: list = []

    def __init__(self, model, per_digit, seeds, ref_steps, teacher_cfg, path=None):
        self.per_digit, self.refs = per_digit, {s: "ref" for s in seeds}
        self.path, self.layout = path, "polarity" if path == "polarity" else "digits"
        FakeEvaluator.paths.append(path)

    def rows(self, lora_path, steps_list, cfg, eta):
        FakeEvaluator.calls.append((lora_path and lora_path.split("/")[-1], list(steps_list), cfg, eta))
        student = lora_path is not None
        return {
            k: [
                {
                    "adherence": (0.97 if student else 1.0) - eta / 100,
                    "frechet_teacher": (0.3 if student else 1.5) / k,
                    "trajectory_error": (0.1 if student else 0.2) / k,
                }
            ]
            for k in steps_list
        }

    def score(self, seed, images):
        assert images == "ref"
        return {"adherence": 0.977, "frechet_teacher": 0.0, "trajectory_error": 0.0}


@pytest.fixture
def fake(stand_in_evaluator):
    return stand_in_evaluator(FakeEvaluator)


def test_rows_pair_with_the_teacher_at_equal_calls(tmp_path, fake, capsys):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    out = tmp_path / "r.json"
    args = ["--lora", f"k=4 stage={lora}@1,4", "--lora", f"final={lora}@2@1", "--per-digit", "50", "--out", str(out)]
    assert eq.main(args) == 0
    res = json.loads(out.read_text())
    assert res["samples"] == 500
    names = [r["name"] for r in res["rows"]]
    assert names == [
        "teacher DDIM 50 cfg 3 (reference)",
        "teacher DDIM 1 cfg 1",
        "teacher DDIM 1 cfg 3",
        "teacher DDIM 2 cfg 3",
        "k=4 stage, 1 steps",
        "k=4 stage, 4 steps",
        "final, 2 steps, eta 1",
    ]
    # the teacher is sampled at cfg 1 for one call and at cfg 3 (2 calls a step) otherwise
    assert (None, [1], 1.0, 0.0) in fake.calls and (None, [2], 3.0, 0.0) in fake.calls
    by = {c["lora"]: c for c in res["comparisons"]}
    assert by["k=4 stage, 4 steps"]["teacher"] == "teacher DDIM 2 cfg 3"
    assert by["k=4 stage, 1 steps"]["teacher"] == "teacher DDIM 1 cfg 1"
    assert by["final, 2 steps, eta 1"]["teacher"] == "teacher DDIM 1 cfg 3"
    c = by["k=4 stage, 4 steps"]
    assert c["wins"] == {"adherence": False, "frechet_teacher": True, "trajectory_error": True}
    assert c["adherence_digits"]["lora_minus_teacher"] == -15 and c["adherence_digits"]["of"] == 500
    assert c["adherence_digits"]["p"] < 0.001
    md = out.with_suffix(".md").read_text()
    assert "| k=4 stage, 4 steps | teacher DDIM 2 cfg 3 | LoRA | LoRA | teacher (-15 of 500, p=0.000) |" in md
    assert "--per-digit 50" in res["command"]
    assert "k=4 stage, 4 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "spec, says",
    [
        ("noname", "expected NAME=FILE@STEPS"),
        ("a={f}", "expected NAME=FILE@STEPS"),
        ("a={f}@two", "STEPS must be integers"),
        ("a={f}@0", "steps must be >= 1"),
        ("a={f}@2@1.5", "eta in [0, 1]"),
        ("a={f}@2@0@0.5", "cfg in [1, 30]"),
        ("a={f}@2@0@x", "ETA and CFG numbers"),
        ("a={f}@2@0@1@9", "expected NAME=FILE@STEPS"),
        ("a={d}/missing.safetensors@2", "no such file"),
    ],
)
def test_bad_lora_spec_is_one_line(tmp_path, fake, capsys, spec, says):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    assert eq.main(["--lora", spec.format(f=f, d=tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --lora") and says in err[0]
    assert not fake.calls and not (tmp_path / "r.json").exists()


def test_another_embedded_teacher_is_judged_with_its_own_layout(tmp_path, fake):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    out = tmp_path / "r.json"
    assert eq.main(["--lora", f"a={lora}@2", "--model", "polarity", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert fake.paths[-1] == "polarity" and res["model"] == "polarity" and res["data_layout"] == "polarity"
    assert res["command"].endswith("--model polarity")
    assert "teacher: polarity" in out.with_suffix(".md").read_text()


def test_an_unknown_embedded_teacher_is_one_line(tmp_path, fake, capsys):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    assert eq.main(["--lora", f"a={lora}@2", "--model", "nosuch", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model 'nosuch'" in err[0] and "polarity" in err[0]
    assert not fake.calls and not (tmp_path / "r.json").exists()


class SeededEvaluator(FakeEvaluator):
    """LoRA scores shift with the training seed in the file name (s0, s1, s2)."""

    def rows(self, lora_path, steps_list, cfg, eta):
        out = super().rows(lora_path, steps_list, cfg, eta)
        if lora_path:
            seed = int(lora_path.split("/")[-1][1])
            for k in out:
                out[k][0]["trajectory_error"] += seed / 100  # seed 2 loses to the teacher at 4 calls
        return out


def seeded_loras(tmp_path) -> list[str]:
    """--lora arguments for one k=4 LoRA file per training seed 0-2 (s0/s1/s2.safetensors)."""
    specs = []
    for seed in range(3):
        f = tmp_path / f"s{seed}.safetensors"
        f.write_bytes(b"x")
        specs += ["--lora", f"k=4 stage (seed {seed})={f}@4"]
    return specs


def test_loras_named_by_seed_are_summarised_over_seeds(tmp_path, stand_in_evaluator):
    stand_in_evaluator(SeededEvaluator)
    specs = seeded_loras(tmp_path)
    specs += ["--lora", f"alone={tmp_path / 's0.safetensors'}@4"]
    out = tmp_path / "r.json"
    assert eq.main([*specs, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    [g] = res["over_seeds"]  # "alone" has no seed tag and is not grouped
    assert g["name"] == "k=4 stage, 4 steps" and g["seeds"] == 3 and g["calls"] == 4
    traj = g["trajectory_error"]
    assert traj["values"] == pytest.approx([0.025, 0.035, 0.045]) and traj["mean"] == pytest.approx(0.035)
    assert traj["ci95"] == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)
    # the teacher's 2 steps: 0.1 traj. error; every seed's LoRA is below it
    assert g["lora_wins_in_seeds"] == {"trajectory_error": 3, "frechet_teacher": 3, "adherence": 0}
    md = out.with_suffix(".md").read_text()
    assert "| k=4 stage, 4 steps | 4 | 3 | 0.035 ± 0.025 |" in md and "| 3 / 3 / 0 |" in md


def test_a_lora_row_with_guidance_costs_two_calls_a_step(tmp_path, fake):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    out = tmp_path / "r.json"
    assert eq.main(["--lora", f"k=2 stage={lora}@2@0@1.2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    row = next(r for r in res["rows"] if r["kind"] == "lora")
    assert row["name"] == "k=2 stage, 2 steps, cfg 1.2" and row["calls"] == 4 and row["cfg"] == 1.2
    assert ("a.safetensors", [2], 1.2, 0.0) in fake.calls
    [c] = res["comparisons"]
    assert c["teacher"] == "teacher DDIM 2 cfg 3"  # 4 calls


def test_match_gives_the_teacher_steps_with_a_trajectory_error_as_low(tmp_path, stand_in_evaluator):
    from train.evaluate import TEACHER_LADDER

    stand_in_evaluator(SeededEvaluator)
    specs = seeded_loras(tmp_path)
    out = tmp_path / "r.json"
    assert eq.main([*specs, "--match", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    # the teacher at cfg 3 on the whole ladder (its traj. error: 0.2 / steps)
    rows = {r["name"]: r for r in res["rows"]}
    assert {r["steps"] for r in res["rows"] if r["kind"] == "teacher" and r["cfg"] == 3.0} == set(TEACHER_LADDER)
    # LoRA traj. errors 0.025 / 0.035 / 0.045: the teacher needs 8 / 6 / 6 steps (0.025 / 0.033 / 0.033)
    got = [rows[f"k=4 stage (seed {s}), 4 steps"]["teacher_steps_to_match"] for s in range(3)]
    assert got == [8, 6, 6] and rows["k=4 stage (seed 0), 4 steps"]["teacher_calls_to_match"] == 16
    [g] = res["over_seeds"]
    assert g["teacher_steps_to_match"] == 6 and g["teacher_calls_to_match"] == 12  # mean 0.035
    md = out.with_suffix(".md").read_text()
    assert "| teacher (-30 of 1000, p=0.000) | 8 (16 calls) |" in md and "| 3 / 3 / 0 | 6 (12 calls) |" in md
    assert res["command"].endswith(" --match")


def test_without_match_no_ladder_is_scored(tmp_path, fake):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    out = tmp_path / "r.json"
    assert eq.main(["--lora", f"a={lora}@4", "--out", str(out)]) == 0
    assert [c for c in fake.calls if c[0] is None] == [(None, [2], 3.0, 0.0)]
    assert "teacher_steps_to_match" not in json.loads(out.read_text())["rows"][-1]
