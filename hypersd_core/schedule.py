"""The discrete VP noise schedule of SD1.5/SDXL, timestep <-> VE-sigma conversion and the two
timestep selections few-step LoRAs are sampled with.

Conventions: T training timesteps (1000), alpha_bar_t = prod(1 - beta), VP coefficients
alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t); VE sigma (k-diffusion, ComfyUI)
sigma_ve(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) and x_ve = x_vp / alpha_t.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

SD_BETA_START = 0.00085
SD_BETA_END = 0.012
SD_TIMESTEPS = 1000


def trailing_timestep(index, steps: int, num_train_timesteps: int = SD_TIMESTEPS):
    """The ``index``-th point, counted from the low end, of the N-step DDIM "trailing" grid:
    round(T - (N-1-index)*T/N) - 1 (N = 4: 249, 499, 749, 999); index -1 gives -1 ("time zero").

    The one definition of the trailing grid: :func:`trailing_timesteps` lists it high to low and
    :class:`~hypersd_core.segments.SegmentGrid` is the TSCD solver grid on it. Works on ints and
    integer tensors (computed in float64, as numpy computes diffusers' grid).
    """
    ratio = num_train_timesteps / steps
    if isinstance(index, torch.Tensor):
        pos = (steps - 1 - index).to(torch.float64)
        return torch.round(num_train_timesteps - pos * ratio).long() - 1
    return int(round(num_train_timesteps - (steps - 1 - index) * ratio)) - 1


def trailing_timesteps(steps: int, num_train_timesteps: int = SD_TIMESTEPS) -> list[int]:
    """DDIM "trailing" spacing, high to low (4 steps: 999, 749, 499, 249), as diffusers picks it."""
    _check_steps(steps, num_train_timesteps)
    return [trailing_timestep(steps - 1 - i, steps, num_train_timesteps) for i in range(steps)]


def tcd_timesteps(
    steps: int,
    original_steps: int = 50,
    strength: float = 1.0,
    num_train_timesteps: int = SD_TIMESTEPS,
) -> list[int]:
    """Timesteps diffusers' TCDScheduler picks (4 steps, original 50: 999, 759, 499, 259).

    ``strength`` < 1 is img2img: the origin grid is cut to its lowest ``strength`` share first.
    """
    _check_steps(steps, num_train_timesteps)
    if not 1 <= original_steps <= num_train_timesteps:
        raise ValueError(f"original_steps must be in [1, {num_train_timesteps}], got {original_steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    k = num_train_timesteps // original_steps
    origin = np.asarray([k * i - 1 for i in range(1, int(original_steps * strength) + 1)])[::-1]
    if steps > len(origin):
        raise ValueError(
            f"{steps} steps need original_steps*strength >= {steps}; got {len(origin)} "
            f"(raise original_steps or strength)"
        )
    idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in origin[idx]]


def precise_dtype(device) -> torch.dtype:
    """float64 for schedule math where the device has it; Apple's MPS has none, so float32 there."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _check_steps(steps: int, num_train_timesteps: int) -> None:
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be an integer in [1, {num_train_timesteps}], got {steps!r}")


class VPSchedule:
    """A discrete VP schedule held as a float64 table of alpha_bar over T timesteps."""

    def __init__(self, alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor):
        a = torch.as_tensor(
            np.asarray(alphas_cumprod, dtype=np.float64)
            if not isinstance(alphas_cumprod, torch.Tensor)
            else alphas_cumprod.detach().cpu().double()
        )
        if a.ndim != 1 or len(a) < 2:
            raise ValueError("alphas_cumprod must be a 1-D table with at least 2 entries")
        if not bool(((a > 0) & (a <= 1)).all()) or not bool((a[1:] <= a[:-1]).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1] and be non-increasing")
        self.alphas_cumprod = a
        self.sigmas = ((1 - a) / a).sqrt()  # VE sigma per timestep, increasing
        self.log_sigmas = self.sigmas.log()
        self._device_tables: dict = {}

    def _tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, log_sigmas) on ``device`` in its most precise dtype, copied there once."""
        key = torch.device(device)
        if key not in self._device_tables:
            dt = precise_dtype(key)
            self._device_tables[key] = (self.sigmas.to(key, dt), self.log_sigmas.to(key, dt))
        return self._device_tables[key]

    @classmethod
    def scaled_linear(
        cls,
        beta_start: float = SD_BETA_START,
        beta_end: float = SD_BETA_END,
        num_train_timesteps: int = SD_TIMESTEPS,
    ) -> "VPSchedule":
        """The SD1.5/SDXL schedule: betas linear in sqrt space."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_sigmas(cls, sigmas: Sequence[float] | torch.Tensor) -> "VPSchedule":
        """From a VE sigma table (ComfyUI's ``model_sampling.sigmas``)."""
        s = torch.as_tensor(sigmas).detach().cpu().double()
        return cls(1.0 / (1.0 + s**2))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    # -- VP coefficients -------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor | float | int) -> torch.Tensor:
        """alpha_bar at (possibly fractional) timesteps; t < 0 means "time zero" (alpha_bar = 1)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        sigma = self.sigma(t)
        return 1.0 / (1.0 + sigma**2)

    def alpha_sigma(self, t, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """VP (alpha_t, sigma_t) for timesteps ``t``, as tensors of ``dtype`` on ``device``."""
        ab = self.alpha_bar(t)
        return ab.sqrt().to(dtype=dtype, device=device), (1 - ab).sqrt().to(dtype=dtype, device=device)

    # -- VE sigma <-> timestep -------------------------------------------------------------
    def sigma(self, t: torch.Tensor | float | int) -> torch.Tensor:
        """VE sigma at timestep(s) t, log-linear between table entries; t < 0 gives 0.

        Runs on t's device without host syncs, so it is safe inside compiled graphs.
        """
        t = torch.as_tensor(t)
        work = precise_dtype(t.device)
        out_dtype = t.dtype if t.is_floating_point() else work
        sigmas, log_sigmas = self._tables(t.device)
        td = t.to(work).clamp(max=self.num_train_timesteps - 1)
        lo = td.clamp(min=0).floor().long()
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        w = td.clamp(min=0) - lo
        log_s = (1 - w) * log_sigmas[lo] + w * log_sigmas[hi]
        s = torch.where(w == 0, sigmas[lo], log_s.exp())  # integer t: the exact table entry
        s = torch.where(td < 0, torch.zeros_like(s), s)
        return s.to(out_dtype)

    def timestep(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional timestep of VE sigma (inverse of :meth:`sigma`, log-linear; 0 -> -1).

        A sigma equal to a table entry rounded to its own dtype (e.g. a float32 schedule from
        :meth:`sigmas_for_timesteps`) maps to that exact integer timestep, as diffusers passes it.
        """
        sigma = torch.as_tensor(sigma)
        work = precise_dtype(sigma.device)
        out_dtype = sigma.dtype if sigma.is_floating_point() else work
        sigmas, log_sigmas = self._tables(sigma.device)
        s = sigma.to(work)
        log_s = torch.maximum(s, sigmas[0]).log()  # a tensor bound: float(self.sigma_min) would break graphs
        idx = torch.searchsorted(log_sigmas, log_s.reshape(-1)).reshape(log_s.shape)
        hi = idx.clamp(1, len(log_sigmas) - 1)
        lo = hi - 1
        w = ((log_s - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])).clamp(0, 1)
        t = lo.to(work) + w
        if sigma.is_floating_point():
            grid = sigmas.to(sigma.dtype)
            t = torch.where(sigma == grid[hi], hi.to(t.dtype), torch.where(sigma == grid[lo], lo.to(t.dtype), t))
        t = torch.where(s <= 0, torch.full_like(t, -1.0), t)
        return t.to(out_dtype)

    def sigmas_for_timesteps(self, timesteps: Sequence[int], final: str = "zero", dtype=torch.float32) -> torch.Tensor:
        """A k-diffusion sigma schedule: sigma(t) for each timestep, then a final entry.

        final="zero" ends at 0 (the sampler returns the clean x0, as ComfyUI schedules do);
        final="t0" ends at sigma(0), reproducing diffusers' last step exactly.
        """
        if final not in ("zero", "t0"):
            raise ValueError(f"final must be 'zero' or 't0', got {final!r}")
        timesteps = [float(t) for t in timesteps]  # checked as numbers: no tensor values are read
        if timesteps and (max(timesteps) >= self.num_train_timesteps or min(timesteps) < 0):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        ts = torch.tensor(timesteps, dtype=torch.float64)
        last = torch.zeros(1, dtype=torch.float64) if final == "zero" else self.sigmas[:1]
        return torch.cat([self.sigma(ts), last]).to(dtype)


def ve_input_scale(sigma: torch.Tensor) -> torch.Tensor:
    """c_in = 1/sqrt(1+sigma^2): maps a VE sample to the VP model input."""
    return 1.0 / (sigma**2 + 1.0).sqrt()


def unit_noise_to_ve(noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The VE sample a sampler starts from at ``sigma`` given unit-variance VP noise z (the start
    diffusers uses): x = sqrt(1 + sigma^2) * z, whose VP model input is z itself."""
    return noise * (sigma**2 + 1).sqrt()


def comfyui_start_correction(sigma: float | torch.Tensor) -> float | torch.Tensor:
    """Factor that turns ComfyUI's starting noise sigma*z into the diffusers start sqrt(1+sigma^2)*z.

    ComfyUI scales starting noise by sqrt(1+sigma^2) only at sigma_max and by sigma below it;
    multiplying x = sigma*z by this factor gives :func:`unit_noise_to_ve` of z.
    A tensor sigma gives a tensor, without a host sync (samplers pass ``sigmas[0]``).
    """
    if isinstance(sigma, torch.Tensor):
        return (1.0 + sigma * sigma).sqrt() / sigma
    if sigma <= 0:
        raise ValueError("comfyui_start_correction needs sigma > 0")
    return math.sqrt(1.0 + sigma * sigma) / sigma
