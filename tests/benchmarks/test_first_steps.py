"""first_steps_embedded: the hand-over sampler is exact at both ends (no LoRA steps: the reference
itself; all K: the LoRA's own K-step images), rows and flips are written, bad input is one line."""

import json

import pytest
import torch

from benchmarks import first_steps_embedded as fs


def test_hand_over_is_exact_at_both_ends_and_rows_are_written(tmp_path, random_lora):
    md = dict(base_model="embedded-digits-polarity", steps=[2], stage="tscd")
    lora = str(random_lora(tmp_path / "run", 4, "polarity", **md) / "hypersd_lora.safetensors")
    out = tmp_path / "fs.json"
    argv = ["--lora", lora, "--steps", "2", "--model", "polarity", "--per-digit", "1", "--alone", "--out", str(out)]
    assert fs.main(argv) == 0
    res = json.loads(out.read_text())
    rows = {(r["sampler"], r["first"]): r for r in res["rows"]}
    assert set(rows) == {
        *(("lora", j) for j in (0, 1, 2)),
        ("teacher", 1),
        ("lora alone", 1),
        ("lora alone", 2),
        ("teacher alone", 1),
    }
    # the first step alone is the first step then the teacher; the teacher's only step alone is its whole run
    assert rows["lora alone", 1]["trajectory_error"] == rows["lora", 1]["trajectory_error"]
    assert rows["teacher alone", 1]["trajectory_error"] == rows["teacher", 1]["trajectory_error"]
    assert rows["lora alone", 2]["trajectory_error"] > 0
    assert rows["lora", 0]["trajectory_error"] == 0 and rows["lora", 0]["flips"] == 0  # the reference itself
    assert all(0 <= r["flips"] <= 1 for r in res["rows"]) and res["samples"] == 10 and res["model"] == "polarity"
    assert "flips vs reference" in out.with_suffix(".md").read_text()

    from benchmarks.equal_calls_large_n_embedded import large_n_evaluator

    ev = large_n_evaluator(1, 3.0, 1, "polarity")
    assert torch.equal(fs.handed_over(ev, None, 2, 0), ev.refs[fs.EVAL_SEED])
    whole = ev.rows(lora, [2], 1.0, 0.0)[2][0]["trajectory_error"]
    assert rows["lora", 2]["trajectory_error"] == pytest.approx(whole, abs=1e-4)  # all K steps: the LoRA's own


def test_flips_counts_the_other_brightness_sign():
    ref = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.5, -0.2]])
    assert fs.flips(ref, ref) == 0
    assert fs.flips(-ref, ref) == 1
    assert fs.flips(torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.5, -0.2]]), ref) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--lora", "{d}/missing.safetensors"], "no such file"),
        (["--lora", "{f}", "--steps", "3"], "--steps must be even"),
        (["--lora", "{f}", "--model", "nosuch"], "--model 'nosuch'"),
        (["--lora", "{f}", "--per-digit", "0"], "--per-digit must be >= 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, says):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    argv = [s.format(f=f, d=tmp_path) for s in args] + ["--out", str(tmp_path / "r.json")]
    assert fs.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0]
    assert not (tmp_path / "r.json").exists()
