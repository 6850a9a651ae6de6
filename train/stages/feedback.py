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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from hypersd_core.losses import reward_hinge_loss
from hypersd_core.parameterization import DiscreteVPDenoiser, add_noise, vp_to_ve
from hypersd_core.rewards import score
from hypersd_core.samplers import get_sigmas_tscd, sample_tscd, seeded_noise_sampler, tscd_jump_sigmas, tscd_renoise_std
from hypersd_core.schedule import VPSchedule, unit_noise_to_ve

from . import register_stage
from .tscd import TSCDStage


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


def pick_stop(steps: int, late_start: float, generator: torch.Generator | None = None) -> int:
    """Index of the step taken with gradients: uniform over the late share of an n-step run."""
    first = min(steps - 1, int(math.floor(late_start * steps)))
    return int(torch.randint(first, steps, (1,), generator=generator))


def refl_x0(
    denoiser: Callable,
    noise: torch.Tensor,
    steps: int,
    stop: int,
    *,
    eta: float = 0.3,
    spacing: str = "trailing",
    schedule: VPSchedule | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """x̂0 of step ``stop`` of an n-step TSCD run from unit-variance VP ``noise``: the steps before
    it without gradients (exactly as ``sample_tscd`` runs them), that step with gradients."""
    schedule = schedule or VPSchedule.scaled_linear()
    sigmas = get_sigmas_tscd(steps, schedule, spacing=spacing).to(noise.device)
    x = unit_noise_to_ve(noise, sigmas[0])
    if stop > 0:
        ns = seeded_noise_sampler(x, seed) if eta > 0 else None
        with torch.no_grad():
            head = sigmas[: stop + 1]
            x = sample_tscd(denoiser, x, head, eta=eta, noise_sampler=ns, schedule=schedule, disable=True)
            if eta > 0:  # sample_tscd does not re-noise after its own last step; the full run does
                std = tscd_renoise_std(head, tscd_jump_sigmas(head, eta, schedule))[-1]
                x = x + std * ns(head[-2], head[-1])
    return denoiser(x, sigmas[stop] * x.new_ones(x.shape[0]))


def data_x0(
    denoiser: Callable,
    clean: torch.Tensor,
    t: torch.Tensor,
    schedule: VPSchedule | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x̂0 (with gradients) of real data ``clean`` noised to timesteps ``t``."""
    schedule = schedule or VPSchedule.scaled_linear()
    alpha, sigma = schedule.alpha_sigma(t, dtype=clean.dtype, device=clean.device)
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
    x_vp = add_noise(clean, noise, alpha, sigma)
    return denoiser(vp_to_ve(x_vp, alpha), schedule.sigma(t).to(clean))


def feedback_loss(
    reward: Callable, decode: Callable, x0: torch.Tensor, prompts: Sequence[str], opts: FeedbackOptions
) -> tuple[torch.Tensor, dict]:
    """λ·mean(ReLU(α − r)) of the decoded x̂0, and logs (mean reward, share above α)."""
    images = decode(x0)
    r = score(reward, images, prompts)
    loss = reward_hinge_loss(r, opts.threshold, opts.weight)
    return loss, {
        "reward": float(r.detach().mean()),
        "reward_above_threshold": float((r.detach() >= opts.threshold).float().mean()),
    }


def student_denoiser(
    unet, cond: torch.Tensor, schedule: VPSchedule, prediction_type: str = "epsilon", added_cond: dict | None = None
) -> DiscreteVPDenoiser:
    """The student (the UNet with its active LoRA) as a k-diffusion denoiser on fixed embeddings."""
    from train.sampling import GuidedUNet

    return DiscreteVPDenoiser(GuidedUNet(unet, cond, added_cond=added_cond), schedule, prediction_type)


def options_from(cfg, key: str, cls):
    """A stage's ``options[key]`` mapping as dataclass ``cls`` (unknown keys name the valid ones)."""
    from train.config import ConfigError, from_dict

    raw = (cfg.options or {}).get(key, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"stage options.{key} must be a mapping, got {raw!r}")
    try:
        return from_dict(cls, raw, f"options.{key}")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_stage_rewards(ctx, specs, default_threshold: float) -> list[tuple[str, float, float, Callable]]:
    """[(name, weight, threshold, reward)] from the config's reward list. Each entry may set its
    own ``weight`` (multiplies the term's lambda) and ``threshold`` (alpha): reward scales differ
    (aesthetic ~1-10, ImageReward ~N(0,1)). ``digits`` without a path uses the model's classifier."""
    from train.rewards import build_reward
    from train.rewards.digits import DigitReward

    out = []
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        weight = float(spec.pop("weight", 1.0))
        threshold = float(spec.pop("threshold", default_threshold))
        if spec.get("name") == "digits" and not spec.get("path") and "classifier" in ctx.extras:
            opts = {k: v for k, v in spec.items() if k != "name"}
            reward = DigitReward(ctx.extras["classifier"], **opts).to(ctx.device)
        else:
            reward = build_reward(spec, ctx.device)
        out.append((spec["name"], weight, threshold, reward))
    if not out:
        raise ValueError("the feedback term needs at least one reward in options.feedback.rewards")
    return out


class FeedbackTerm:
    """The ReFL term for a stage: rewards built once; per call, one x̂0 batch scored by every
    reward, loss = sum_k lambda*w_k*mean(ReLU(alpha_k - r_k))."""

    def __init__(self, ctx, opts: FeedbackOptions):
        self.ctx, self.opts = ctx, opts
        self.rewards = build_stage_rewards(ctx, opts.rewards, opts.threshold)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        try:
            return self.ctx.decode(x0, grad=True)
        except TypeError:  # a decode without the grad switch: the identity (pixel space) is still fine
            out = self.ctx.decode(x0)
            if out is not x0:
                raise RuntimeError("the trainer's decode() runs without gradients; feedback needs decode(x, grad=True)")
            return out

    def x0(self, batch, n: int, unet) -> tuple[torch.Tensor, dict]:
        """x̂0 with gradients through the last model call (source: noise or data)."""
        ctx, o = self.ctx, self.opts
        added = None if batch.added_cond is None else {k: v[:n] for k, v in batch.added_cond.items()}
        den = student_denoiser(unet, batch.cond[:n], ctx.schedule, ctx.prediction_type, added)
        g = ctx.generator
        if o.source == "data":
            lo, hi = o.data_t_range
            t = torch.randint(int(lo), int(hi) + 1, (n,), generator=g).to(ctx.device)
            return data_x0(den, batch.x0[:n].float(), t, ctx.schedule, g), {}
        steps = int(o.steps[int(torch.randint(len(o.steps), (1,), generator=g))])
        stop = pick_stop(steps, o.late_start, g)
        noise = torch.randn(batch.x0[:n].shape, generator=g).to(ctx.device)
        seed = int(torch.randint(2**31 - 1, (1,), generator=g))
        x0 = refl_x0(den, noise, steps, stop, eta=o.eta, spacing=o.spacing, schedule=ctx.schedule, seed=seed)
        return x0, {"feedback/steps": steps, "feedback/stop": stop}

    def __call__(self, batch, unet=None) -> tuple[torch.Tensor, dict]:
        n = min(self.opts.batch_size or batch.x0.shape[0], batch.x0.shape[0])
        x0, logs = self.x0(batch, n, unet if unet is not None else self.ctx.base_unet)
        images = self.decode(x0)
        total = 0.0
        for name, weight, threshold, reward in self.rewards:
            r = score(reward, images, batch.prompts[:n])
            total = total + reward_hinge_loss(r, threshold, self.opts.weight * weight)
            logs[f"feedback/reward_{name}"] = float(r.detach().mean())
            logs[f"feedback/above_threshold_{name}"] = float((r.detach() >= threshold).float().mean())
        logs["loss/feedback"] = float(total.detach())
        return total, logs


@register_stage("feedback")
class FeedbackStage(TSCDStage):
    """TSCD distillation (this stage's segments, weights, EMA) plus the ReFL term
    (``options.feedback``) on every ``every``-th step, in one backward."""

    def setup(self) -> None:
        super().setup()
        self.fb_opts = options_from(self.cfg, "feedback", FeedbackOptions)
        self.feedback = FeedbackTerm(self.ctx, self.fb_opts)

    def train_step(self, batch, step: int) -> dict[str, float]:
        ctx = self.ctx
        with ctx.accelerator.autocast():
            loss, logs, pieces = self.tscd_loss(batch)
            # after the TSCD forwards: their target pass swaps EMA weights into the LoRA in place,
            # which would invalidate a graph built before it
            if step % self.fb_opts.every == 0:
                l_fb, fb_logs = self.feedback(batch)
                loss = loss + l_fb
                logs.update(fb_logs)
        logs["loss/total"] = loss.detach()
        ctx.step_lora(loss, ctx.config.optim.max_grad_norm)
        logs.update(self.after_lora_step(batch, pieces))
        return {k: float(v) for k, v in logs.items()}
