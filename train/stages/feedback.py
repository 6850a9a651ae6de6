"""Human-feedback learning (ReFL, ImageReward's recipe as Hyper-SD uses it).

One feedback step: sample without gradients with the TSCD sampler (hypersd_core.samplers) from
noise down to a random late step of an n-step trajectory, take the next model call with
gradients to get x̂0, decode it (VAE, or the identity for the pixel-space embedded model),
score it with the configured rewards and return λ·mean(ReLU(α − r)). With ``source: data`` the
start is a real image noised to a random t instead (the perceptual/segmentation feedback).
The stage adds this to the TSCD distillation loss so the student does not drift.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from hypersd_core.losses import reward_hinge_loss
from hypersd_core.parameterization import DiscreteVPDenoiser, add_noise
from hypersd_core.rewards import score
from hypersd_core.samplers import get_sigmas_tscd, sample_tscd, seeded_noise_sampler, tscd_jump_sigmas
from hypersd_core.schedule import VPSchedule


@dataclass
class FeedbackOptions:
    """ReFL settings (``feedback:`` in a stage config)."""

    rewards: list = field(default_factory=lambda: [{"name": "digits"}])
    weight: float = 1e-3  # lambda
    threshold: float = 2.0  # alpha: rewards above it stop pulling
    steps: list = field(default_factory=lambda: [1, 2, 4, 8])  # trajectories are sampled with one of these
    late_start: float = 0.5  # the grad step is one of the last (1 - late_start) share of the steps
    eta: float = 0.3
    spacing: str = "trailing"
    source: str = "noise"  # noise | data (real images noised to t in data_t_range)
    data_t_range: list = field(default_factory=lambda: [100, 600])
    every: int = 1  # feedback on every n-th training step
    batch_size: int | None = None  # None: the training batch size

    def __post_init__(self):
        if self.source not in ("noise", "data"):
            raise ValueError(f"feedback.source must be 'noise' or 'data', got {self.source!r}")
        if not self.steps or any(int(n) < 1 for n in self.steps):
            raise ValueError(f"feedback.steps must be positive step counts, got {self.steps}")
        if not 0.0 <= self.late_start < 1.0:
            raise ValueError(f"feedback.late_start must be in [0, 1), got {self.late_start}")
        if self.every < 1:
            raise ValueError(f"feedback.every must be >= 1, got {self.every}")


def pick_stop(steps: int, late_start: float, rng: random.Random) -> int:
    """Index of the step taken with gradients: uniform over the late share of an n-step run."""
    first = min(steps - 1, int(math.floor(late_start * steps)))
    return rng.randint(first, steps - 1)


def refl_x0(denoiser: Callable, noise: torch.Tensor, steps: int, stop: int, *, eta: float = 0.3,
            spacing: str = "trailing", schedule: VPSchedule | None = None, seed: int | None = None) -> torch.Tensor:
    """x̂0 of step ``stop`` of an n-step TSCD run from unit-variance VP ``noise``: the steps before
    it without gradients (exactly as ``sample_tscd`` runs them), that step with gradients."""
    schedule = schedule or VPSchedule.scaled_linear()
    sigmas = get_sigmas_tscd(steps, schedule, spacing=spacing).to(noise.device)
    x = noise * (sigmas[0] ** 2 + 1).sqrt()  # VP z at t_max -> VE x
    if stop > 0:
        ns = seeded_noise_sampler(x, seed) if eta > 0 else None
        with torch.no_grad():
            head = sigmas[: stop + 1]
            x = sample_tscd(denoiser, x, head, eta=eta, noise_sampler=ns, schedule=schedule, disable=True)
            if eta > 0:  # sample_tscd does not re-noise after its own last step; the full run does
                sig_s = tscd_jump_sigmas(head, eta, schedule)[-1]
                x = x + (head[-1] ** 2 - sig_s**2).clamp(min=0).sqrt() * ns(head[-2], head[-1])
    return denoiser(x, sigmas[stop] * x.new_ones(x.shape[0]))


def data_x0(denoiser: Callable, clean: torch.Tensor, t: torch.Tensor, schedule: VPSchedule | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """x̂0 (with gradients) of real data ``clean`` noised to timesteps ``t``."""
    schedule = schedule or VPSchedule.scaled_linear()
    alpha, sigma = schedule.alpha_sigma(t, dtype=clean.dtype, device=clean.device)
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
    x_vp = add_noise(clean, noise, alpha, sigma)
    return denoiser(x_vp / alpha.view(-1, *[1] * (clean.ndim - 1)), schedule.sigma(t).to(clean))


def feedback_loss(reward: Callable, decode: Callable, x0: torch.Tensor, prompts: Sequence[str],
                  opts: FeedbackOptions) -> tuple[torch.Tensor, dict]:
    """λ·mean(ReLU(α − r)) of the decoded x̂0, and logs (mean reward, share above α)."""
    images = decode(x0)
    r = score(reward, images, prompts)
    loss = reward_hinge_loss(r, opts.threshold, opts.weight)
    return loss, {"reward": float(r.detach().mean()), "reward_above_threshold": float((r.detach() >= opts.threshold).float().mean())}


def student_denoiser(unet, cond: torch.Tensor, schedule: VPSchedule, prediction_type: str = "epsilon",
                     added_cond: dict | None = None) -> DiscreteVPDenoiser:
    """The student (the UNet with its active LoRA) as a k-diffusion denoiser on fixed embeddings."""
    from train.sampling import GuidedUNet

    return DiscreteVPDenoiser(GuidedUNet(unet, cond, added_cond=added_cond), schedule, prediction_type)
