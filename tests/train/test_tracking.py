"""Training habits: LR schedules from diffusers' get_scheduler (counting the step being taken, so
constant_with_warmup is the old linear warmup exactly), and logging through accelerate's trackers
(TensorBoard by default, W&B when installed and asked for; a missing one asked for is an error)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from train.config import ConfigError, load_config
from train.optim import build_lr_scheduler


def lrs(name, base=1e-3, warmup=4, steps=12, start=0):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=123.0)  # the stage's lr replaces it
    cfg = types.SimpleNamespace(lr_scheduler=name, warmup_steps=warmup)
    sched = build_lr_scheduler(opt, cfg, base, steps, start)
    out = []
    for _ in range(start, steps):
        out.append(sched.get_last_lr()[0])
        assert opt.param_groups[0]["lr"] == out[-1]
        opt.step()
        sched.step()
    return out


def test_constant_with_warmup_is_the_old_linear_warmup():
    got = lrs("constant_with_warmup")
    want = [1e-3 * min(1.0, (s + 1) / 4) for s in range(12)]  # what the trainer did before
    assert got == pytest.approx(want, rel=1e-12)
    assert lrs("constant") == [1e-3] * 12


def test_cosine_warms_up_then_decays_and_resumes_in_place():
    got = lrs("cosine", steps=20)
    assert got[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    tail = got[3:]
    assert all(a > b for a, b in zip(tail, tail[1:])) and 0 < got[-1] < 0.01 * 1e-3
    want_last = 1e-3 * 0.5 * (1 + math.cos(math.pi * (20 - 4) / (21 - 4)))  # diffusers' formula at step 20 of 21
    assert got[-1] == pytest.approx(want_last)
    assert lrs("cosine", steps=20, start=7) == pytest.approx(got[7:])  # a resumed stage continues its schedule


def test_unknown_schedules_and_trackers_are_refused():
    with pytest.raises(ConfigError, match="optim.lr_scheduler must be one of constant, constant_with_warmup, cosine"):
        load_config("embedded", overrides=["optim.lr_scheduler=onecycle"])
    with pytest.raises(ConfigError, match=r"log_with: unknown tracker\(s\) \['neptune'\]"):
        load_config("embedded", overrides=["log_with=[tensorboard,neptune]"])
    assert load_config("embedded").log_with == ["tensorboard"]


def test_a_tracker_asked_for_but_missing_is_an_error_tensorboard_a_warning(monkeypatch, tmp_path, caplog):
    from train import tracking

    import importlib.util

    # only our module's view of the installed packages (accelerate caches its own at import)
    find_spec = lambda name: None if name in ("wandb", "tensorboard") else importlib.util.find_spec(name)  # noqa: E731
    monkeypatch.setattr(tracking, "importlib", types.SimpleNamespace(util=types.SimpleNamespace(find_spec=find_spec)))
    with pytest.raises(ImportError, match="log_with=wandb needs the wandb package: pip install wandb"):
        tracking.trackers(["wandb"], tmp_path)
    assert tracking.trackers(["tensorboard"], tmp_path) == []
    assert "tensorboard is not installed" in caplog.text


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_scalars_and_images_reach_tensorboard_and_wandb(tmp_path, monkeypatch, fresh_accelerate):
    pytest.importorskip("wandb", reason="pip install wandb to test the W&B tracker")
    import numpy as np
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.tracking import flat_config, log_image, trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    acc = Accelerator(cpu=True, log_with=trackers(["tensorboard", "wandb"], tmp_path))
    acc.init_trackers("hypersd-test", config=flat_config({"optim": {"lr": 1e-4, "betas": [0.9, 0.99]}, "seed": 0}))
    assert [t.name for t in acc.trackers] == ["tensorboard", "wandb"]
    for step in range(3):
        acc.log({"loss/total": 1.0 / (step + 1), "lr": 1e-4}, step=step)
    log_image(acc, "samples", np.zeros((8, 12, 3), np.uint8), 2)
    acc.end_training()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("loss/total")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert events.Images("samples")[0].width == 12
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_the_trainer_logs_its_schedule_to_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _, out = tiny_run
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    lr = [e.value for e in events.Scalars("lr")]
    base = trainer.cfg.optim.lr
    assert lr and all(0 < v <= base * (1 + 1e-6) for v in lr)
    assert events.Images("samples")
