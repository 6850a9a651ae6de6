"""Every fenced ``python`` and ``bash`` example in README.md and train/README.md runs, with tiny
models, so a broken example fails here.

Substitutions (the examples name real models and data this CI does not have):
- Python: each example runs as a script of its own; the names it leaves to the reader are defined first: ``unet`` is a tiny
  random-weight diffusers ``UNet2DConditionModel`` (4 latent channels, no ``**kwargs`` on its
  forward), ``emb`` its text embeddings.
- ``python -m train ...`` (also through ``.venv/bin/python`` or ``accelerate launch ... -m train``):
  run with ``--print-config`` added, which loads the preset, applies every ``--set`` and checks the
  merged config (no training; model and data paths are not opened). A literal ``...`` is dropped;
  an accelerate ``--config_file`` must exist.
- ``python -m hypersd_demo ...``: every command line is parsed by the demo's own parser; the first
  one (the embedded model) is also started on a free port and its page fetched.
- ``cd ComfyUI/custom_nodes`` + ``git clone <this repository> hypersd``: run in a temporary folder
  with this checkout as the repository.
- ``accelerate launch ... --machine_rank 1 ...`` (the same command for another node): checked to
  name a machine rank. A SLURM batch script (``#!/bin/bash`` + ``#SBATCH``): ``bash -n`` syntax
  check, its accelerate config must exist, its ``-m train`` arguments run with ``--print-config``.
- Not run, by name: ``bash .ci/setup`` / ``bash .ci/run`` (what CI itself runs), ``pip install``
  (the extras it names must exist in pyproject.toml), ``tensorboard --logdir`` (a viewer; its folder
  must be the one the trainer writes). Any other command fails this test until a rule is added.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "train/README.md"]


def fences(doc: str) -> list[tuple[str, str, int]]:
    """(language, code, line) of each fenced block in ``doc``."""
    out, lang, buf, start = [], None, [], 0
    for n, line in enumerate((REPO / doc).read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, buf, start = line[3:].strip() or "text", [], n
            else:
                out.append((lang, "\n".join(buf), start))
                lang = None
        elif lang is not None:
            buf.append(line)
    return out


def blocks(language: str) -> list:
    return [
        pytest.param(code, id=f"{doc}:{line}") for doc in DOCS for lang, code, line in fences(doc) if lang == language
    ]


def commands(code: str) -> list[list[str]]:
    """Shell commands of a block: comments dropped, continuations joined, ``&&`` split."""
    text = re.sub(r"\\\n", " ", code)
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        out += [shlex.split(part) for part in line.split("&&")]
    return out


def test_the_docs_have_examples():
    assert len(blocks("python")) >= 2 and len(blocks("bash")) >= 5


PRELUDE = """
import torch
from diffusers import UNet2DConditionModel

torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
    norm_num_groups=4, attention_head_dim=2, cross_attention_dim=16,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
).eval().requires_grad_(False)
emb = torch.randn(1, 77, 16)
"""

CHECKS = """
if "image_latent" in globals():
    assert image_latent.shape == (1, 4, 64, 64) and torch.isfinite(image_latent).all()
    print("checked image_latent")
if "Mine" in globals():
    from train.stages import get_stage

    assert get_stage("mine").__name__ == "Mine"
    print("checked stage")
"""


@pytest.mark.parametrize("code", blocks("python"))
def test_python_example_runs(code, tmp_path):
    """The example as a script of its own, after a prelude that defines what it leaves to the reader
    (a tiny diffusers ``unet`` and its text embeddings ``emb``), then checks on what it made."""
    script = tmp_path / "example.py"
    script.write_text(PRELUDE + "\n# --- the README example ---\n" + code + "\n# --- checks ---\n" + CHECKS)
    r = _run([sys.executable, str(script)], REPO)
    if "sample_tscd" in code:
        assert "checked image_latent" in r.stdout
    if "register_stage" in code:
        assert "checked stage" in r.stdout


def _run(argv, cwd, timeout=300):
    r = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert r.returncode == 0, f"{' '.join(argv)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def _train_args(cmd: list[str]) -> list[str] | None:
    """The ``train`` arguments of a training command, or None if it is not one."""
    if cmd[:1] == ["accelerate"]:
        if "-m" not in cmd:  # "the same with another --machine_rank": a variant of the line before
            assert "--machine_rank" in cmd, f"accelerate line without -m train: {cmd}"
            return []
        i = cmd.index("--config_file") if "--config_file" in cmd else None
        if i is not None:
            assert (REPO / cmd[i + 1]).is_file(), f"accelerate config {cmd[i + 1]} does not exist"
        return cmd[cmd.index("-m") + 2 :] if cmd[cmd.index("-m") + 1] == "train" else None
    if cmd[0] in ("python", ".venv/bin/python") and cmd[1:3] == ["-m", "train"]:
        return cmd[3:]
    return None


@pytest.mark.parametrize("code", blocks("bash"))
def test_shell_example_runs(code, tmp_path):
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cwd = tmp_path
    demo_started = False
    if code.startswith("#!/bin/bash") and "#SBATCH" in code:  # a SLURM batch script: syntax, config, train args
        subprocess.run(["bash", "-n"], input=code, text=True, check=True)
        for cfg in re.findall(r"--config_file (\S+)", code):
            assert (REPO / cfg).is_file(), f"accelerate config {cfg} does not exist"
        joined = re.sub(r"\\\n\s*", " ", code)
        args = shlex.split(re.search(r"-m train (.*?)'?$", joined, re.S).group(1).strip().rstrip("'"))
        r = _run([sys.executable, "-m", "train", *args, "--print-config"], REPO)
        assert '"stages"' in r.stdout
        return
    for cmd in commands(code):
        cmd = [a for a in cmd if a != "..."]
        train_args = _train_args(cmd)
        if train_args == []:
            continue
        if train_args is not None:
            r = _run([sys.executable, "-m", "train", *train_args, "--print-config"], REPO)
            assert '"stages"' in r.stdout
        elif cmd[:3] == ["python", "-m", "hypersd_demo"]:
            from hypersd_demo.server import parse_args

            parse_args(cmd[3:])
            if not demo_started and not cmd[3:]:
                _serve_once(tmp_path)
                demo_started = True
        elif cmd[:2] == ["bash", ".ci/setup"] or cmd == ["bash", ".ci/run"]:
            assert (REPO / cmd[1]).is_file()
        elif cmd[:2] == ["pip", "install"]:
            for spec in cmd[2:]:
                named = re.findall(r"\[([^\]]+)\]", spec)
                for extra in ",".join(named).split(",") if named else []:
                    assert extra in extras, f"pip install names the extra {extra!r}, which pyproject.toml lacks"
        elif cmd[0] == "cd":
            cwd = tmp_path / cmd[1]
            cwd.mkdir(parents=True, exist_ok=True)
        elif cmd[:2] == ["git", "clone"]:
            target = cmd[-1]
            _run(["git", "clone", "-q", str(REPO), target], cwd)
            assert (cwd / target / "__init__.py").is_file() and (cwd / target / "nodes").is_dir()
        elif cmd[0] == "tensorboard":
            assert Path(cmd[cmd.index("--logdir") + 1]).name == "tensorboard"
        else:
            pytest.fail(f"no rule for the documented command {' '.join(cmd)!r}: add one to this test")


def _serve_once(tmp_path: Path) -> None:
    """Start the demo (embedded model) on a free port, fetch its page, stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypersd_demo", "--port", "0", "--threads", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        deadline, url = time.time() + 240, None
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"serving on (http://\S+)", line)
            url = m.group(1) if m else None
        assert url, "the demo did not start"
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<html" in page.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
