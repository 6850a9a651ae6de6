"""Model parameterisations (eps, v, x0) in VP space, the DDIM step, and a k-diffusion-style
denoiser wrapper that turns a VP network into ``D(x_ve, sigma) -> x0``.

Sampling (through the wrapper) and training (through the functions) share these formulas.
"""

from __future__ import annotations

from typing import Callable

import torch

from .schedule import VPSchedule, ve_input_scale

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def per_sample(c, x: torch.Tensor, cast: bool = True) -> torch.Tensor:
    """A scalar or per-sample (B,) coefficient shaped to broadcast against x (B, ...): trailing
    dimensions appended, on x's device and (``cast``) in x's dtype."""
    c = torch.as_tensor(c, device=x.device, dtype=x.dtype if cast else None)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim)) if c.ndim else c


def to_x0_eps(model_output, x_t, alpha, sigma, prediction_type: str = "epsilon"):
    """(x0_hat, eps_hat) from a VP model output at x_t = alpha*x0 + sigma*eps."""
    a, s = per_sample(alpha, x_t), per_sample(sigma, x_t)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "v_prediction":
        x0 = a * x_t - s * model_output
        eps = a * model_output + s * x_t
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    else:
        check_prediction_type(prediction_type)
    return x0, eps


def training_target(x0, noise, alpha, sigma, prediction_type: str = "epsilon"):
    """What a network of ``prediction_type`` is trained to output at x_t = alpha*x0 + sigma*noise:
    the noise (eps), v = alpha*noise - sigma*x0, or x0 itself (sample)."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return per_sample(alpha, x0) * noise - per_sample(sigma, x0) * x0
    return x0


def vp_to_ve(x_vp, alpha):
    """A VP sample x_vp = alpha*x0 + sigma*eps as the VE sample x_vp/alpha that k-diffusion
    denoisers take (sigma_ve = sigma/alpha)."""
    return x_vp / per_sample(alpha, x_vp)


def jump(x0, eps, alpha, sigma):
    """Deterministic DDIM jump: alpha*x0 + sigma*eps (x0 itself when alpha=1, sigma=0)."""
    return per_sample(alpha, x0) * x0 + per_sample(sigma, x0) * eps


def add_noise(x0, noise, alpha, sigma):
    """Forward diffusion q(x_t | x0) in VP space."""
    return jump(x0, noise, alpha, sigma)


def renoise(x_s, noise, alpha_bar_s, alpha_bar_t):
    """Forward from s up to t > s: sqrt(ab_t/ab_s)*x_s + sqrt(1 - ab_t/ab_s)*z."""
    r = per_sample(alpha_bar_t / alpha_bar_s, x_s)
    return r.sqrt() * x_s + (1 - r).clamp(min=0).sqrt() * noise


def cfg_combine(cond, uncond, scale):
    """Classifier-free guidance; scale 1 returns cond (diffusers' guidance_scale convention)."""
    return uncond + per_sample(scale, cond) * (cond - uncond)


class DiscreteVPDenoiser(torch.nn.Module):
    """Wrap a VP network ``net(x_vp, t, **kw)`` as a k-diffusion denoiser ``D(x_ve, sigma, **kw)``.

    Mirrors k-diffusion's DiscreteEpsDDPMDenoiser for eps, v and x0 networks; timesteps passed to
    the network are fractional where sigma is off the integer grid (``quantize=True`` rounds).
    ``seed`` in the keyword arguments (ComfyUI's ``extra_args`` convention: the samplers read it
    for their noise) is not passed on to the network.
    """

    def __init__(
        self,
        net: Callable,
        schedule: VPSchedule | None = None,
        prediction_type: str = "epsilon",
        quantize: bool = False,
    ):
        super().__init__()
        self.net = net
        self.schedule = schedule or VPSchedule.scaled_linear()
        self.prediction_type = check_prediction_type(prediction_type)
        self.quantize = quantize

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, seed=None, **kwargs) -> torch.Tensor:
        # sigma and t stay in at least float32: in fp16/bf16 t = 999 would round to 1000 (bf16)
        # and sigma's rounding would move t by several steps.
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.dtype != torch.float64:
            sigma = sigma.float()
        sigma = sigma.expand(x.shape[0])
        c_in = ve_input_scale(sigma)
        t = self.schedule.timestep(sigma)
        if self.quantize:
            t = t.round()
        x_vp = x * per_sample(c_in, x)
        out = self.net(x_vp, t, **kwargs)
        alpha, sig = c_in, sigma * c_in  # VP alpha = 1/sqrt(1+s^2), VP sigma = s/sqrt(1+s^2)
        x0, _ = to_x0_eps(out, x_vp, alpha, sig, self.prediction_type)
        return x0
