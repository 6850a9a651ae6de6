"""The LoRA optimizer: AdamW (fused on CUDA when available) or bitsandbytes' 8-bit AdamW."""

from __future__ import annotations

import torch


def build_optimizer(params, cfg, device: torch.device):
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError("optim.name=adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); "
                              "or use optim.name=adamw") from e
        return bnb.optim.AdamW8bit(params, **kw)
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    if fused:
        kw["fused"] = True
    return torch.optim.AdamW(params, **kw)


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


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
