"""Two "nodes" on one machine: two ``accelerate launch`` commands (2 machines, one process each,
c10d rendezvous on 127.0.0.1) train the embedded default (reduced steps) to the same LoRA as one
2-process launch on one machine."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hypersd_core.lora_formats import load_lora

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN = [
    "-m",
    "train",
    "--preset",
    "embedded",
    "--set",
    "stage_all.steps=2",
    "--set",
    "data.batch_size=8",
    "--set",
    "eval.enabled=false",
    "--set",
    "sample.num=2",
    "--set",
    "sample.steps=[1]",
    "--set",
    "sample.teacher_steps=2",
    "--set",
    "checkpoint_every=0",
    "--set",
    "progress=false",
    "--set",
    "threads=1",
]
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def _lora(out):
    return load_lora(out / "hypersd_lora.safetensors")[0]


@pytest.mark.slow
def test_two_nodes_match_one_node(tmp_path):
    one = tmp_path / "one"
    res = subprocess.run(
        LAUNCH + ["--num_machines", "1", "--main_process_port", str(_free_port()), *TRAIN, "--output", str(one)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]

    two = tmp_path / "two"
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            LAUNCH
            + [
                "--num_machines",
                "2",
                "--machine_rank",
                str(r),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                "--rdzv_backend",
                "c10d",
                *TRAIN,
                "--output",
                str(two),
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    logs = []
    try:
        for p in nodes:
            logs.append(p.communicate(timeout=600)[0])
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in nodes), "\n----\n".join(log[-3000:] for log in logs)
    a, b = _lora(one), _lora(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    # the run really trained: the LoRA's up-projections moved away from their zero init
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_up" in k)
