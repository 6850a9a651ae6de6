"""The LoRA optimizer: AdamW (fused on CUDA when available) or bitsandbytes' 8-bit AdamW, and its
learning-rate schedule from diffusers' get_scheduler."""

from __future__ import annotations

import warnings

import torch


def build_optimizer(params, cfg, device: torch.device):
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError(
                "optim.name=adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); or use optim.name=adamw"
            ) from e
        return bnb.optim.AdamW8bit(params, **kw)
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    if fused:
        kw["fused"] = True
    return torch.optim.AdamW(params, **kw)


def build_lr_scheduler(optimizer, cfg, base_lr: float, steps: int, start: int = 0):
    """diffusers' ``get_scheduler(cfg.lr_scheduler)`` over one stage of ``steps`` optimizer steps,
    from ``base_lr``, positioned for step ``start``. Call ``.step()`` after each optimizer step.

    The schedule counts the step being taken: step s trains at the schedule's value at s + 1, so
    warmup step 1 of W uses base_lr / W (never 0) and a decay ends just above 0 on the last step."""
    from diffusers.optimization import get_scheduler

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    for group in inner.param_groups:  # a new stage starts from its own lr (the scheduler reads initial_lr)
        group["lr"] = group["initial_lr"] = base_lr
    warmup = cfg.warmup_steps if cfg.lr_scheduler != "constant" else None
    scheduler = get_scheduler(cfg.lr_scheduler, inner, num_warmup_steps=warmup, num_training_steps=steps + 1)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start + 1):
            scheduler.step()
    return scheduler


def reset_state(optimizer) -> None:
    """Forget moments (a new stage starts its optimizer afresh from the previous stage's LoRA)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    inner = getattr(inner, "optim", inner)  # ZeroRedundancyOptimizer: this process's shard
    inner.state.clear()


def build_zero_optimizer(params, cfg, device: torch.device):
    """AdamW under torch's ZeroRedundancyOptimizer: each process keeps the state of its share of the
    parameters (needs an initialised process group; checkpoint.py saves each process's shard)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if cfg.name != "adamw":
        raise ValueError("optim.zero supports optim.name=adamw only")
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.fused if cfg.fused is not None else device.type == "cuda":
        kw["fused"] = True
    return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **kw)
