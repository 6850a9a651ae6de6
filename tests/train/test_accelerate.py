"""Two processes through ``accelerate launch`` on the CPU (gloo): DDP training, checkpoints through
``Accelerator.save_state`` (optimizer + every rank's RNG) plus per-rank parts, one exported LoRA;
kill-and-resume gives the uninterrupted run's LoRA, under DDP and under ZeroRedundancyOptimizer
(each rank saves and restores its own optimizer shard).

``accelerate launch --cpu --num_processes 2`` starts one process unless MPI is installed (it
hands several CPU processes to mpirun); ``--multi_gpu`` starts them with torchrun, and the
trainer's Accelerator(cpu=True) on a machine without CUDA joins them in a gloo group. FSDP and
DeepSpeed cannot run here: accelerate turns them on only for accelerator devices (a CPU run is
MULTI_CPU), so ZeroRedundancyOptimizer stands in for a sharded optimizer."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hypersd_core.lora_formats import load_lora

REPO = Path(__file__).resolve().parents[2]
# Stage 2 is long enough to be killed in; it has an EMA target and a discriminator.
STAGES = [
    {"name": "tscd", "segments": 2, "steps": 3, "ema_decay": 0.5, "noise_perturbation": 0.05, "cfg_max": 2.0},
    {"name": "tscd", "segments": 1, "steps": 11, "ema_decay": 0.5, "adv_weight": 0.1, "cfg_max": 2.0},
]


def launch_cmd(out, tokenizer_path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",  # accelerate picks a free port itself on one machine: no race with other tests' sockets
        "-m",
        "train",
        "--preset",
        "tiny-test",
        "--output",
        str(out),
        "--set",
        f"model.tokenizer_path={tokenizer_path}",
        "--set",
        "eval.enabled=false",
        "--set",
        "sample.steps=[1]",
        "--set",
        "checkpoint_every=2",
        "--set",
        "stages=" + json.dumps(STAGES),
        *extra,
    ]


ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def run(cmd):
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def kill_at(cmd, target: Path):
    """Start ``cmd`` and SIGKILL the launcher and every worker once ``target`` exists (torchrun starts
    its workers in sessions of their own, so a process-group kill would miss them)."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not target.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait()
    assert target.is_dir(), "the run ended or stalled before writing the checkpoint to kill it at"
    assert not (target.parent.parent / "hypersd_lora.safetensors").exists(), "the run finished before it was killed"


def assert_same_lora(a: Path, b: Path):
    la, lb = load_lora(a / "hypersd_lora.safetensors")[0], load_lora(b / "hypersd_lora.safetensors")[0]
    assert la.keys() == lb.keys()
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer_path):
    """An uninterrupted 2-process DDP run."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    run(launch_cmd(out, tokenizer_path))
    return out


def test_two_process_cpu_run(reference):
    out = reference
    sd, _ = load_lora(out / "hypersd_lora.safetensors")
    assert any(k.endswith(".alpha") for k in sd)
    last = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert json.loads((last / "state.json").read_text())["num_processes"] == 2
    # save_state: one optimizer copy (DDP replicates it) and each rank's RNG states.
    acc = last / "accelerate"
    assert (acc / "optimizer.bin").is_file()
    assert (acc / "random_states_0.pkl").is_file() and (acc / "random_states_1.pkl").is_file()
    assert not list(acc.glob("model*")), "the frozen base must not be saved with every checkpoint"
    # Each rank draws its own data and stage noise (different generator states), while DDP keeps one model.
    r0, r1 = load_file(str(last / "rank0.safetensors")), load_file(str(last / "rank1.safetensors"))
    assert not (r0["data.gen"] == r1["data.gen"]).all()
    assert not (r0["stage_gen"] == r1["stage_gen"]).all()


def test_ddp_kill_and_resume(reference, tmp_path, tokenizer_path):
    out = tmp_path / "killed"
    kill_at(launch_cmd(out, tokenizer_path), out / "checkpoints" / "step-8")  # mid stage 2 (stage 1 ends at 3)
    res = run(launch_cmd(out, tokenizer_path, "--resume"))
    assert "resuming from step-" in res.stdout and "stage 2" in res.stdout
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert_same_lora(out, reference)


def test_zero_shards_kill_and_resume(reference, tmp_path, tokenizer_path):
    """ZeroRedundancyOptimizer: each rank owns part of the LoRA's optimizer state and checkpoints it;
    the resumed run ends on the uninterrupted DDP run's LoRA (same AdamW math, partitioned)."""
    out = tmp_path / "zero"
    cmd = launch_cmd(out, tokenizer_path, "--set", "optim.zero=true")
    kill_at(cmd, out / "checkpoints" / "step-8")
    step8 = out / "checkpoints" / "step-8"
    shards = [load_file(str(step8 / f"rank{r}.safetensors")) for r in (0, 1)]
    owned = [{k.split(".")[1] for k in s if k.startswith("opt_shard.") and k.endswith(".exp_avg")} for s in shards]
    assert owned[0] and owned[1], "both ranks hold optimizer state"
    n_lora = len([k for k in load_file(str(step8 / "lora.safetensors"))])
    assert len(owned[0]) + len(owned[1]) == n_lora  # the shards partition the LoRA parameters
    assert (step8 / "accelerate" / "random_states_0.pkl").is_file() and (
        step8 / "accelerate" / "random_states_1.pkl"
    ).is_file()
    res = run(cmd + ["--resume"])
    assert "resuming from step-" in res.stdout
    assert_same_lora(out, reference)
