"""GPU speed settings from diffusers' torch.compile guide, shared by the demo and the benchmarks."""

from __future__ import annotations

import torch


def tune_modules(*modules) -> None:
    """In place: fused QKV projections and channels-last layout (UNets, VAEs; None entries are skipped)."""
    for m in modules:
        if m is None:
            continue
        if hasattr(m, "fuse_qkv_projections"):
            m.fuse_qkv_projections()
        m.to(memory_format=torch.channels_last)


def inductor_tuning() -> None:
    """Inductor settings diffusers recommends for UNets (global; call before compiling)."""
    import torch._inductor.config as cfg

    cfg.conv_1x1_as_mm = True
    cfg.coordinate_descent_tuning = True
    cfg.coordinate_descent_check_all_directions = True
    cfg.epilogue_fusion = False
