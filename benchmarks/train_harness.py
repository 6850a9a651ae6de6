"""Build the trainer's StageContext around a random-weight UNet (the student through
train.trainer.prepare_student, the trainer's own LoRA/optimizer/accelerate set-up) and time steps of
the real TSCD stage and of the LCM-LoRA-style baseline."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from hypersd_core.schedule import VPSchedule
from train.config import StageConfig, TrainConfig
from train.lora import adapters_disabled
from train.stages import StageContext, get_stage
from train.stages.base import Batch
from train.trainer import prepare_student

from hypersd_models.specs import ModelSpec, build_unet, conditioning

_ACCELERATOR = None


def accelerator(mixed_precision: str = "no"):
    """One Accelerator per process (accelerate keeps global state; a second one must agree)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        _ACCELERATOR = Accelerator(mixed_precision=mixed_precision)
    elif _ACCELERATOR.mixed_precision != mixed_precision:
        raise ValueError(f"this process already uses mixed_precision={_ACCELERATOR.mixed_precision!r}")
    return _ACCELERATOR


@dataclass
class StepSetup:
    ctx: StageContext
    unet: torch.nn.Module
    lora_params: list
    lora_param_count: int


def build_context(
    unet: torch.nn.Module,
    *,
    mixed_precision: str = "no",
    weight_dtype=torch.float32,
    rank: int = 64,
    gradient_checkpointing: bool = False,
    uncond=None,
    lr: float = 1e-6,
    solver_steps: int = 40,
    seed: int = 0,
) -> StepSetup:
    """A StageContext over ``unet`` (moved to the accelerator's device) with a fresh rank-``rank`` LoRA.

    ``uncond(n) -> (embeddings, added_cond)`` supplies the unconditional text conditioning.
    """
    acc = accelerator(mixed_precision)
    cfg = TrainConfig(solver_steps=solver_steps, seed=seed)
    cfg.optim.lr = lr
    cfg.lora.rank = rank
    cfg.model.gradient_checkpointing = gradient_checkpointing
    unet.train()
    unet_p, params, opt_p = prepare_student(unet, cfg, acc, weight_dtype)
    ctx = StageContext(
        config=cfg,
        accelerator=acc,
        unet=unet_p,
        base_unet=unet,
        schedule=VPSchedule.scaled_linear(),
        prediction_type="epsilon",
        lora_params=params,
        optimizer=opt_p,
        uncond=uncond,
        decode=lambda x: x,
        teacher=lambda: adapters_disabled(unet),
        generator=torch.Generator().manual_seed(seed),
        log=lambda scalars, step: None,
        output_dir="",
        weight_dtype=weight_dtype,
    )
    return StepSetup(ctx, unet, params, sum(p.numel() for p in params))


def tscd_stage(
    ctx: StageContext,
    segments: int = 8,
    adv_weight: float = 0.0,
    cfg_min: float = 3.0,
    cfg_max: float = 8.0,
    ema_decay: float = 0.95,
    loss: str = "huber",
):
    """The trainer's registered ``tscd`` stage, set up on ``ctx``."""
    scfg = StageConfig(
        name="tscd",
        segments=segments,
        adv_weight=adv_weight,
        cfg_min=cfg_min,
        cfg_max=cfg_max,
        ema_decay=ema_decay,
        loss=loss,
    )
    stage = get_stage("tscd")(ctx, scfg, 0)
    stage.setup()
    return stage


def random_batch(spec: ModelSpec, batch: int, resolution: int, device, dtype, seed: int = 0) -> Batch:
    """Precomputed-latent batch (as with the trainer's latent cache): latents + text conditioning."""
    g = torch.Generator().manual_seed(seed)
    lat = spec.latent_size(resolution)
    x0 = torch.randn(batch, spec.config["in_channels"], lat, lat, generator=g).to(device)
    cond, added = conditioning(spec, batch, device, dtype, resolution, seed)
    return Batch(x0=x0, cond=cond, prompts=[""] * batch, added_cond=added)


def uncond_fn(spec: ModelSpec, resolution: int, device, dtype):
    cond, added = conditioning(spec, 1, device, dtype, resolution, seed=12345)

    def uncond(n: int):
        return cond.expand(n, *cond.shape[1:]), (
            None if added is None else {k: v.expand(n, *v.shape[1:]) for k, v in added.items()}
        )

    return uncond


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step_fn, batch: Batch, device: torch.device, warmup: int = 2, iters: int = 5) -> dict:
    """Seconds per optimizer step (wall clock, synchronised), samples/s and peak memory."""
    for i in range(warmup):
        step_fn(batch, i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(iters):
        step_fn(batch, warmup + i)
    _sync(device)
    dt = (time.perf_counter() - t0) / iters
    out = {"seconds_per_step": dt, "samples_per_s": batch.x0.shape[0] / dt, "iters": iters, "warmup": warmup}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def release() -> None:
    """Drop the references accelerate holds and free cached GPU memory between measurements."""
    if _ACCELERATOR is not None:
        _ACCELERATOR.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_method(
    method: str,
    spec: ModelSpec,
    *,
    batch: int,
    resolution: int,
    device,
    mixed_precision: str,
    weight_dtype,
    rank: int,
    gradient_checkpointing: bool,
    warmup: int,
    iters: int,
    segments: int = 8,
    adv_weight: float = 0.0,
) -> dict:
    """Build a fresh UNet + LoRA and time ``method``: tscd | tscd_adv | lcm_shared | lcm_copy."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    unet = build_unet(spec, device=device, dtype=weight_dtype)
    setup = build_context(
        unet,
        mixed_precision=mixed_precision,
        weight_dtype=weight_dtype,
        rank=rank,
        gradient_checkpointing=gradient_checkpointing,
        uncond=uncond_fn(spec, resolution, device, weight_dtype),
    )
    teacher_copy = None
    if method in ("tscd", "tscd_adv"):
        stage = tscd_stage(setup.ctx, segments=segments, adv_weight=adv_weight if method == "tscd_adv" else 0.0)
        step_fn = stage.train_step
    elif method in ("lcm_shared", "lcm_copy"):
        from .lcm_baseline import LCMLoraStep

        if method == "lcm_copy":
            teacher_copy = build_unet(spec, device=device, dtype=weight_dtype)
        step_fn = LCMLoraStep(setup.ctx, teacher_unet=teacher_copy).train_step
    else:
        raise ValueError(f"unknown method {method!r}; use tscd, tscd_adv, lcm_shared or lcm_copy")
    b = random_batch(spec, batch, resolution, device, weight_dtype)
    try:
        res = time_steps(step_fn, b, device, warmup, iters)
    except torch.OutOfMemoryError as e:  # reported as a result, not a crash: the table shows OOM
        res = {"error": f"out of memory: {str(e).splitlines()[0]}"}
    res.update(
        method=method,
        model=spec.name,
        batch=batch,
        resolution=resolution,
        lora_rank=rank,
        lora_params=setup.lora_param_count,
        gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision,
        weight_dtype=str(weight_dtype).replace("torch.", ""),
    )
    del step_fn, setup, unet, teacher_copy, b
    release()
    return res
