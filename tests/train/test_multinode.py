"""Two "nodes" on one machine: two ``accelerate launch`` commands (2 machines, one process each,
c10d rendezvous on 127.0.0.1) train the embedded default (reduced steps) to the same LoRA as one
2-process launch on one machine."""

import os
import socket
import subprocess
import sys
import time
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


def _two_nodes(out: Path, logs: Path, timeout: float = 600) -> tuple[list, list[str]]:
    """Both "nodes" of a 2-machine launch; when one fails the other is stopped at once (it would wait
    for its peer until the rendezvous times out). Exit codes (negative: killed) and logs."""
    logs.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    files = [open(logs / f"node{r}.log", "w+") for r in (0, 1)]

    def start(r: int) -> subprocess.Popen:
        return subprocess.Popen(
            LAUNCH
            + ["--num_machines", "2", "--machine_rank", str(r), "--main_process_ip", "127.0.0.1"]
            + ["--main_process_port", port, "--rdzv_backend", "c10d", *TRAIN, "--output", str(out)],
            cwd=REPO,
            env=ENV,
            stdout=files[r],
            stderr=subprocess.STDOUT,
            text=True,
        )

    # Rank 0 first, rank 1 once rank 0's rendezvous store listens: both "nodes" are 127.0.0.1, so a
    # rank 1 started at once can bind the store first, and rank 0's launcher then finds the port
    # taken and exits (rank 1 then waits for it until the rendezvous times out).
    nodes = [start(0)]
    until = time.monotonic() + 120
    while nodes[0].poll() is None and time.monotonic() < until and not _listening(int(port)):
        time.sleep(0.1)
    nodes.append(start(1))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in nodes]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.5)
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for f in files:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return [p.returncode for p in nodes], texts


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_clash(log: str) -> bool:
    return any(s in log for s in ("Address already in use", "EADDRINUSE", "another process is utilizing it"))


def _lora(out):
    return load_lora(out / "hypersd_lora.safetensors")[0]


@pytest.mark.slow
def test_two_nodes_match_one_node(tmp_path):
    one = tmp_path / "one"
    res = subprocess.run(
        LAUNCH + ["--num_machines", "1", "--main_process_port", "0", *TRAIN, "--output", str(one)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]

    # Once more on another port when the launch never reached training (a port taken between
    # _free_port() and the rendezvous makes rank 0 exit and rank 1 wait for it); a failure in
    # training itself is not retried.
    for attempt in range(2):
        two = tmp_path / f"two{attempt}"
        codes, logs = _two_nodes(two, tmp_path / f"logs{attempt}")
        launched = (two / "config.json").exists() and not any(_port_clash(log) for log in logs)
        if all(c == 0 for c in codes) or launched:
            break
    assert all(c == 0 for c in codes), "\n----\n".join(
        f"node {r} (exit {c}):\n{log[-3000:]}" for r, (c, log) in enumerate(zip(codes, logs))
    )
    a, b = _lora(one), _lora(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    # the run really trained: the LoRA's up-projections moved away from their zero init
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_up" in k)
