"""Hyper-SD core math: schedules, TSCD segments, samplers, LoRA formats and losses.

Depends on torch, numpy and safetensors only, so ComfyUI and the training code can share it.
"""

from .schedule import VPSchedule, trailing_timesteps, tcd_timesteps
from .segments import SegmentGrid
from .samplers import (
    sample_tscd,
    sample_dmd_onestep,
    get_sigmas_tscd,
    get_sigmas_onestep,
    seeded_noise_sampler,
)

__all__ = [
    "VPSchedule",
    "trailing_timesteps",
    "tcd_timesteps",
    "SegmentGrid",
    "sample_tscd",
    "sample_dmd_onestep",
    "get_sigmas_tscd",
    "get_sigmas_onestep",
    "seeded_noise_sampler",
]
