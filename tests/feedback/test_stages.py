"""The feedback, dmd and unified stages through the real trainer on the tiny model: they run from
the same config/CLI as TSCD, export one LoRA with the right metadata, resume after a kill to the
same result, and stay in sync across 2 processes (gloo, CPU)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hypersd_core.lora_formats import HyperSDMetadata, load_lora

REPO = Path(__file__).resolve().parents[2]
DMD_OPTS = {"real_cfg": 2.0, "fake_updates": 2, "reg_weight": 0.25, "reg_steps": 2, "reg_pairs": 6}
FB_OPTS = {"weight": 0.1, "threshold": 0.0, "steps": [1, 2], "eta": 0.3}


def _config(tmp_path: Path, stages: list, **top) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"stages": stages, **top}))
    return str(path)


def _run(config: str, output: Path, resume: bool = False, overrides=()):
    from train.config import load_config
    from train.trainer import Trainer

    cfg = load_config("tiny-test", [config], ["eval.enabled=false", *overrides], {"output": str(output)})
    return Trainer(cfg, resume=resume).run()


def test_feedback_then_unified_exports_one_lora_for_1_to_8_steps(tmp_path):
    stages = [
        {
            "name": "feedback",
            "segments": 2,
            "steps": 2,
            "loss": "mse",
            "ema_decay": 0.5,
            "options": {"feedback": FB_OPTS},
        },
        {
            "name": "unified",
            "segments": 1,
            "steps": 2,
            "loss": "mse",
            "ema_decay": 0.5,
            "options": {"dmd": DMD_OPTS, "feedback": dict(FB_OPTS, steps=[1])},
        },
    ]
    cfg = _config(tmp_path, stages, export={"steps": None, "spacing": "tcd", "eta": 0.3})
    results = _run(cfg, tmp_path / "out")
    sd, header = load_lora(results["lora"]["kohya"])
    md = HyperSDMetadata.from_header(header)
    assert md.steps == list(range(1, 9)) and md.onestep_timestep == 999 and md.stage == "unified"
    assert md.spacing == "tcd" and md.eta == 0.3
    assert sd and not any("fake" in k for k in sd)  # the fake-score adapter is never exported
    lora1, _ = load_lora(tmp_path / "out" / "lora" / "stage1_feedback_k2.safetensors")
    assert any(not torch.equal(lora1[k], sd[k]) for k in sd)  # the unified stage trained the LoRA further


def test_dmd_stage_at_timestep_800_is_scored_with_the_onestep_sampler(tmp_path):
    """A DMD stage trained at onestep_timestep 800 writes it into the LoRA header, and the
    trainer's metrics and grid score its one-step sampler at 800 next to the 1-step TSCD row."""
    import json

    stages = [{"name": "dmd", "segments": 1, "steps": 1, "options": {"dmd": dict(DMD_OPTS, onestep_timestep=800)}}]
    cfg = _config(tmp_path, stages)
    from train.config import load_config
    from train.trainer import Trainer

    c = load_config("tiny-test", [cfg], [], {"output": str(tmp_path / "out")})
    results = Trainer(c).run()
    md = HyperSDMetadata.from_header(load_lora(results["lora"]["kohya"])[1])
    assert md.onestep_timestep == 800 and md.stage == "dmd"
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
    assert {"student 1", "student 1 t=800", "student 2"} <= set(rows)
    assert rows["student 1 t=800"]["frechet"] != rows["student 1"]["frechet"]  # a different sampler ran
    assert rows["student 1 t=800"]["onestep_timestep"] == 800 and "onestep_timestep" not in rows["student 1"]


def test_unknown_feedback_option_is_a_config_error(tmp_path):
    from train.config import ConfigError

    cfg = _config(tmp_path, [{"name": "feedback", "segments": 1, "steps": 1, "options": {"feedback": {"wieght": 1}}}])
    with pytest.raises(ConfigError, match="wieght"):
        _run(cfg, tmp_path / "out")


class _Killed(RuntimeError):
    pass


def test_dmd_resumes_after_a_kill_to_the_same_lora(tmp_path, monkeypatch):
    """Uninterrupted run vs a run killed after its step-2 checkpoint and resumed: the exported
    LoRAs are identical, so the fake-score adapter, its optimizer and the regression bank were
    all restored."""
    stages = [
        {
            "name": "dmd",
            "segments": 1,
            "steps": 4,
            "ema_decay": 0.0,
            "options": {"dmd": DMD_OPTS, "feedback": dict(FB_OPTS, steps=[1])},
        }
    ]
    cfg = _config(tmp_path, stages, checkpoint_every=2)
    full = _run(cfg, tmp_path / "full")

    from train.stages.dmd import DMDStage

    orig = DMDStage.train_step

    def dies_at_step_3(self, batch, step):
        if step == 3:
            raise _Killed("simulated kill")
        return orig(self, batch, step)

    monkeypatch.setattr(DMDStage, "train_step", dies_at_step_3)
    with pytest.raises(_Killed):
        _run(cfg, tmp_path / "killed")
    monkeypatch.setattr(DMDStage, "train_step", orig)
    ck = load_file(str(next((tmp_path / "killed" / "checkpoints").glob("step-2")) / "stage.safetensors"))
    assert any(k.startswith("fake.") for k in ck) and any(k.startswith("fake_opt.") for k in ck)
    assert ck["bank.z"].shape[0] == 6
    resumed = _run(cfg, tmp_path / "killed", resume=True)
    a, _ = load_lora(full["lora"]["kohya"])
    b, _ = load_lora(resumed["lora"]["kohya"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_two_processes_keep_generator_and_fake_score_in_sync(tmp_path):
    stages = [
        {
            "name": "dmd",
            "segments": 1,
            "steps": 3,
            "ema_decay": 0.0,
            "options": {"dmd": DMD_OPTS, "feedback": dict(FB_OPTS, steps=[1])},
        }
    ]
    cfg = _config(tmp_path, stages)
    out = tmp_path / "out"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(Path(__file__).with_name("_rank_dump.py")),
        cfg,
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (load_file(str(out / f"rank{i}of2.safetensors")) for i in range(2))
    fake = [k for k in r0 if ".fake." in k]
    student = [k for k in r0 if ".default." in k]
    assert fake and student
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)
    assert any(r0[k].abs().max() > 0 for k in fake if "lora_B" in k)  # the fake score did train
    assert (out / "hypersd_lora.safetensors").is_file()
