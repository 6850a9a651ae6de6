"""The two embedded probes (guidance_recipe_embedded, steps_vs_segments_embedded) turn the
evaluator's scores into rows and progress lines through one function; checked with a stand-in
evaluator (their real measurement needs finished embedded runs)."""

import json

import pytest

from benchmarks import guidance_recipe_embedded, steps_vs_segments_embedded


class FakeEvaluator:
    """Scores that depend on the LoRA file, the step count and eta, as the real Evaluator's shape."""

    calls: list = []

    def __init__(self, model, per_digit, seeds, ref_steps, teacher_cfg):
        pass

    def rows(self, lora_path, steps_list, cfg, eta):
        FakeEvaluator.calls.append((lora_path.split("/")[-1], list(steps_list), cfg, eta))
        h = sum(map(ord, lora_path.split("/")[-1])) % 97
        return {
            k: [
                {
                    "adherence": 1 - 0.01 * k - eta / 10,
                    "frechet_teacher": h / 7 + k / 3,
                    "trajectory_error": 0.123456 / k,
                    "frechet": 9.0,  # not a judged column
                }
            ]
            for k in steps_list
        }


@pytest.fixture
def fake(stand_in_evaluator):
    return stand_in_evaluator(FakeEvaluator)


def _run_folder(root, stages=(8, 4, 2)):
    (root / "lora").mkdir(parents=True)
    (root / "hypersd_lora.safetensors").write_bytes(b"x")
    for i, k in enumerate(stages):
        (root / "lora" / f"stage{i + 1}_tscd_k{k}.safetensors").write_bytes(b"x")
    return root


def test_guidance_recipe_rows_lines_and_table(tmp_path, fake, capsys):
    out = tmp_path / "g.json"
    runs = [f"a={_run_folder(tmp_path / 'a')}", f"b b={_run_folder(tmp_path / 'b')}"]
    assert guidance_recipe_embedded.main([f"--run={r}" for r in runs] + ["--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["recipe"], r["steps"]) for r in rows] == [(n, k) for n in ("a", "b b") for k in (1, 2, 4, 8)]
    assert rows[1] == {
        "recipe": "a",
        "steps": 2,
        "adherence": 0.98,
        "frechet_teacher": round(sum(map(ord, "hypersd_lora.safetensors")) % 97 / 7 + 2 / 3, 4),
        "trajectory_error": 0.0617,
    }
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1]
        == f"{'a':<28} 2 steps: adherence 0.980  Frechet->teacher {rows[1]['frechet_teacher']:.2f}  traj.err 0.0617"
    )
    table = out.with_suffix(".md").read_text()
    assert f"| a | 2 | 0.980 | {rows[1]['frechet_teacher']:.2f} | 0.0617 |" in table


def test_steps_vs_segments_rows_and_lines(tmp_path, fake, capsys):
    out = tmp_path / "s.json"
    run = _run_folder(tmp_path / "run")
    assert steps_vs_segments_embedded.main(["--run", str(run), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    want = [("k=2 stage LoRA", k) for k in (1, 2, 4, 8)] + [("k=4 stage LoRA", k) for k in (2, 4, 8)]
    want += [("k=8 stage LoRA", k) for k in (4, 8)] + [("final LoRA eta 0", k) for k in (1, 2, 4, 8)]
    want += [("final LoRA eta 0.5", k) for k in (4, 8)] + [("final LoRA eta 1", k) for k in (4, 8)]
    assert [(r["lora"], r["steps"]) for r in rows] == want
    eta_half = rows[-4]
    assert set(eta_half) == {"lora", "steps", "adherence", "frechet_teacher", "trajectory_error"}
    assert eta_half["adherence"] == 0.91 and eta_half["trajectory_error"] == 0.0309
    lines = capsys.readouterr().out.splitlines()
    assert lines[-5] == (
        f"{'final LoRA eta 0.5':<22} 4 steps: adherence 0.910  Frechet->teacher "
        f"{eta_half['frechet_teacher']:.2f}  traj.err 0.0309"
    )
