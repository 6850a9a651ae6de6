"""Sampling for training-time grids and metrics through hypersd_core's samplers (the same code
ComfyUI runs): a UNet wrapped with classifier-free guidance, then DiscreteVPDenoiser."""

from __future__ import annotations

import torch

from hypersd_core.generate import UNetNet
from hypersd_core.parameterization import DiscreteVPDenoiser, cfg_combine
from hypersd_core.samplers import get_sigmas_tscd, sample_dmd_onestep, sample_tscd, seeded_noise_sampler
from hypersd_core.schedule import VPSchedule, unit_noise_to_ve


class GuidedUNet(torch.nn.Module):
    """``net(x_vp, t)`` = the UNet's output (through hypersd_core's ``UNetNet``) on fixed text
    embeddings, with CFG when ``cfg != 1`` (cond and uncond in one batch).

    ``added_cond`` holds SDXL's extra conditioning (text_embeds, time_ids) and a ControlNet's
    (control_image, control_scale: one per sample) when needed.
    """

    def __init__(
        self,
        unet,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        cfg: float = 1.0,
        added_cond: dict | None = None,
        added_uncond: dict | None = None,
        controlnet=None,
    ):
        super().__init__()
        self.net = UNetNet(unet, controlnet=controlnet)
        self.cond, self.uncond, self.cfg = cond, uncond, float(cfg)
        self.added_cond, self.added_uncond = added_cond or {}, added_uncond or {}
        if self.cfg != 1.0 and uncond is None:
            raise ValueError("cfg != 1 needs unconditional embeddings")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cfg == 1.0:
            return self.net(x, t, self.cond, **self.added_cond).to(x.dtype)
        added = {k: torch.cat([self.added_cond[k], self.added_uncond[k]]) for k in self.added_cond}
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.cond, self.uncond]), **added)
        cond, uncond = out.to(x.dtype).chunk(2)
        return cfg_combine(cond, uncond, self.cfg)


def guided_denoiser(
    unet,
    cond,
    uncond,
    cfg: float,
    schedule: VPSchedule,
    prediction_type: str,
    added_cond=None,
    added_uncond=None,
    controlnet=None,
) -> DiscreteVPDenoiser:
    """The denoiser hypersd_core's samplers call: the UNet on fixed embeddings (CFG when cfg != 1)."""
    net = GuidedUNet(unet, cond, uncond, cfg, added_cond, added_uncond, controlnet)
    return DiscreteVPDenoiser(net, schedule, prediction_type)


@torch.no_grad()
def sample_images(
    unet,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    *,
    steps: int,
    cfg: float = 1.0,
    eta: float = 0.0,
    spacing: str = "trailing",
    schedule: VPSchedule | None = None,
    prediction_type: str = "epsilon",
    seed: int | None = 0,
    onestep_timestep: int | None = None,
    added_cond=None,
    added_uncond=None,
    controlnet=None,
) -> torch.Tensor:
    """Generate from unit-variance VP noise (diffusers' convention) -> x0 in model space.

    ``steps`` TSCD/DDIM steps (eta=0 is DDIM); with ``onestep_timestep``, one step is the one-step
    (DMD) sampler from that timestep. ``controlnet`` (with control_image/control_scale in
    ``added_cond`` and ``added_uncond``) steers both CFG branches.
    """
    schedule = schedule or VPSchedule.scaled_linear()
    model = guided_denoiser(unet, cond, uncond, cfg, schedule, prediction_type, added_cond, added_uncond, controlnet)
    sigmas = get_sigmas_tscd(steps, schedule, spacing=spacing, onestep_timestep=onestep_timestep).to(noise.device)
    x = unit_noise_to_ve(noise, sigmas[0])
    if onestep_timestep is not None and steps == 1:
        return sample_dmd_onestep(model, x, sigmas)
    noise_sampler = seeded_noise_sampler(x, seed) if eta > 0 else None
    return sample_tscd(model, x, sigmas, eta=eta, noise_sampler=noise_sampler, schedule=schedule, disable=True)
