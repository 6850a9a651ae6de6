"""Two processes through ``accelerate launch`` on the CPU (gloo): DDP training, per-rank checkpoint
parts, one exported LoRA.

``accelerate launch --cpu --num_processes 2`` starts one process unless MPI is installed (it
hands several CPU processes to mpirun); ``--multi_gpu`` starts them with torchrun, and the
trainer's Accelerator(cpu=True) on a machine without CUDA joins them in a gloo group."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from hypersd_core.lora_formats import load_lora

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_run(tmp_path, tokenizer_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "train", "--preset", "tiny-test", "--output", str(out),
           "--set", f"model.tokenizer_path={tokenizer_path}", "--set", "eval.enabled=false", "--set", "sample.steps=[1]",
           "--set", "stage_all.steps=2", "--set", "checkpoint_every=1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    sd, _ = load_lora(out / "hypersd_lora.safetensors")
    assert any(k.endswith(".alpha") for k in sd)
    last = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert (last / "rank0.safetensors").is_file() and (last / "rank1.safetensors").is_file()
    assert '"num_processes": 2' in (last / "state.json").read_text()
    # Each rank draws its own data (different generator states), while DDP keeps one model.
    from safetensors.torch import load_file

    r0, r1 = load_file(str(last / "rank0.safetensors")), load_file(str(last / "rank1.safetensors"))
    assert not (r0["data.gen"] == r1["data.gen"]).all()
    assert not (r0["stage_gen"] == r1["stage_gen"]).all()
