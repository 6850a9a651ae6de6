"""The reward protocol of human-feedback learning (ReFL), torch only.

A reward is any callable ``reward(images, prompts) -> rewards`` taking decoded images in [-1, 1]
of shape (B, C, H, W) and B prompts, returning a (B,) tensor that is differentiable in the
images (higher = better). The models themselves (aesthetic predictor, ImageReward, detectors)
live in ``train/rewards``; this module holds the contract and the differentiable preprocessing
they share.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

# OpenAI CLIP / BLIP image normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class Reward(Protocol):
    """``reward(images in [-1, 1] (B,C,H,W), prompts) -> (B,)``, differentiable in images."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def check_images(images: torch.Tensor, prompts: Sequence[str]) -> None:
    """Raise a ValueError unless images is a float (B,C,H,W) batch with one prompt per image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"rewards take float images of shape (B, C, H, W) in [-1, 1], got {got}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")


def score(reward: Reward, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Call a reward and check its answer: a finite (B,) float tensor."""
    check_images(images, prompts)
    r = reward(images, list(prompts))
    if not isinstance(r, torch.Tensor) or r.shape != (images.shape[0],):
        got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        raise ValueError(f"{type(reward).__name__} returned {got}; a reward must return shape ({images.shape[0]},)")
    if not bool(torch.isfinite(r.detach()).all()):
        raise ValueError(f"{type(reward).__name__} returned non-finite rewards")
    return r


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (the gradient is zero only where a pixel is out of range)."""
    return (images * 0.5 + 0.5).clamp(0.0, 1.0)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grey (C=1) images repeated to three channels; RGB passes through."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 image channels, got {images.shape[1]}")
    return images


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of the shorter side to ``size`` and a centre crop, as CLIP's preprocessing
    does, but differentiable (torch interpolation instead of PIL)."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top : top + size, left : left + size]


def clip_preprocess(
    images: torch.Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """[-1, 1] images -> the normalised (B, 3, size, size) input CLIP/BLIP encoders expect."""
    x = resize_center_crop(to_rgb(to_unit_range(images)), size)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class WeightedRewards:
    """Sum of several rewards with weights: ``sum_k w_k * r_k(images, prompts)``."""

    def __init__(self, rewards: Sequence[tuple[float, Reward]]):
        if not rewards:
            raise ValueError("WeightedRewards needs at least one (weight, reward) pair")
        self.rewards = list(rewards)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return sum(float(w) * score(r, images, prompts) for w, r in self.rewards)
