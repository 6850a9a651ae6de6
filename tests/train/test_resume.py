"""Kill a training run after a checkpoint, --resume it, and get exactly the LoRA an uninterrupted
run produces (LoRA, optimizer, EMA, discriminator, data position and RNG all restored)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from hypersd_core.lora_formats import load_lora

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["stage_all.steps=3", "checkpoint_every=2", "progress=false", "eval.enabled=false", "sample.steps=[1]"]


def _args(out, tokenizer_path):
    args = ["--preset", "tiny-test", "--output", str(out), "--set", f"model.tokenizer_path={tokenizer_path}"]
    for o in OVERRIDES + ["stages=" + json.dumps(_stages())]:
        args += ["--set", o]
    return args


def _stages():
    # Stage 2 is long enough to be killed in; it has an EMA target and a discriminator.
    return [
        {"name": "tscd", "segments": 2, "steps": 3, "ema_decay": 0.5, "noise_perturbation": 0.05, "cfg_max": 2.0},
        {"name": "tscd", "segments": 1, "steps": 40, "ema_decay": 0.5, "adv_weight": 0.1, "cfg_max": 2.0},
    ]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tokenizer_path):
    from train.cli import main

    ref = tmp_path / "ref"
    assert main(_args(ref, tokenizer_path)) == 0
    ref_lora, _ = load_lora(ref / "hypersd_lora.safetensors")

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *_args(out, tokenizer_path)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    target = out / "checkpoints" / "step-10"  # mid stage 2 (stage 1 ends at global step 3)
    deadline = time.time() + 300
    while not target.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "hypersd_lora.safetensors").exists(), "the run finished before it could be killed"
    state = json.loads((target / "state.json").read_text())
    assert {k: state[k] for k in ("stage", "step", "global_step", "num_processes")} == {
        "stage": 1,
        "step": 7,
        "global_step": 10,
        "num_processes": 1,
    }

    res = subprocess.run(
        [sys.executable, "-m", "train", *_args(out, tokenizer_path), "--resume"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resumed_from = [ln for ln in res.stdout.splitlines() if ln.startswith("resuming from")]
    assert resumed_from and "stage 2" in resumed_from[0]
    step = int(resumed_from[0].split("step-")[1].split(":")[0])
    assert step >= 10
    lora, _ = load_lora(out / "hypersd_lora.safetensors")
    assert lora.keys() == ref_lora.keys()
    for k in ref_lora:
        torch.testing.assert_close(lora[k], ref_lora[k], rtol=1e-6, atol=1e-7, msg=k)


def test_existing_output_needs_resume(tmp_path, tokenizer_path, capsys):
    from train.cli import main

    (tmp_path / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-1" / "state.json").write_text("{}")
    assert main(_args(tmp_path, tokenizer_path)) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err


def _in_process(*argv):
    from accelerate.state import AcceleratorState

    from train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process
    return main(list(argv))


def test_resume_inside_a_stage_whose_setup_draws_from_the_global_rng(tmp_path, tokenizer_path):
    """Two adversarial stages: each setup draws its discriminator's init from the global torch RNG.
    Resumed from a checkpoint inside stage 1, the RNG states must be restored after stage 1's setup,
    or stage 2's discriminator starts from other weights and the final LoRA drifts (the tiny steps
    draw only from the trainer's generator, so the next stage's setup is where it shows)."""
    adv = {"name": "tscd", "segments": 1, "adv_weight": 0.5, "cfg_max": 2.0, "ema_decay": 0.0}
    stages = [dict(adv, steps=4), dict(adv, steps=2)]
    sets = [f"model.tokenizer_path={tokenizer_path}", "stages=" + json.dumps(stages), "checkpoint_every=2"]
    sets += ["keep_checkpoints=10", "eval.enabled=false", "sample.steps=[1]", "export.dtype=fp32"]
    args = ["--preset", "tiny-test", *(a for o in sets for a in ("--set", o))]
    ref = tmp_path / "ref"
    assert _in_process(*args, "--output", str(ref)) == 0

    # The run as a kill right after the stage-1 step-2 checkpoint would leave it.
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(ref / "config.json", out / "config.json")
    shutil.copytree(ref / "checkpoints" / "step-2", out / "checkpoints" / "step-2")
    state = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())
    assert (state["stage"], state["step"]) == (0, 2)  # inside stage 1

    assert _in_process(*args, "--output", str(out), "--resume") == 0
    a, _ = load_lora(ref / "hypersd_lora.safetensors")
    b, _ = load_lora(out / "hypersd_lora.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k] - b[k]).abs().max():.3g}"
