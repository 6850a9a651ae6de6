"""k-diffusion-signature samplers for Hyper-SD: the TSCD/TCD multistep sampler and the DMD
one-step sampler, plus the sigma schedules they use.

Each sampler is ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``
with ``model(x, sigma, **extra_args) -> denoised x0`` in VE space, so it runs unchanged in
ComfyUI (wrapped in ``KSAMPLER``), under k-diffusion's wrappers and in our own tests.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional

import torch

from .schedule import VPSchedule, comfyui_start_correction, tcd_timesteps, trailing_timesteps

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_DEFAULT_SCHEDULE: VPSchedule | None = None


def default_schedule() -> VPSchedule:
    """The SD1.5/SDXL scaled-linear schedule, built once."""
    global _DEFAULT_SCHEDULE
    if _DEFAULT_SCHEDULE is None:
        _DEFAULT_SCHEDULE = VPSchedule.scaled_linear()
    return _DEFAULT_SCHEDULE


def seeded_noise_sampler(x: torch.Tensor, seed: Optional[int]) -> NoiseSampler:
    """Per-step noise from a generator seeded with the run's seed (None: global RNG).

    Draws on the CPU and moves to x's device, so a seed gives the same image on every device;
    on CUDA the copy goes through pinned memory without blocking, so the step loop never waits
    for the GPU.
    """
    gen = None
    if seed is not None:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)

    def sample(sigma, sigma_next):
        z = torch.randn(x.shape, generator=gen, dtype=torch.float32)
        if x.device.type == "cuda":
            z = z.pin_memory().to(x.device, non_blocking=True)
        return z.to(device=x.device, dtype=x.dtype)

    return sample


def tscd_jump_sigmas(sigmas: torch.Tensor, eta: float, schedule: VPSchedule) -> torch.Tensor:
    """sigma_s per step: s = floor((1-eta)*t') with t' the next step's timestep.

    Vectorised over the whole schedule with tensor ops only (no host syncs). A next sigma of 0
    (clean end) gives sigma_s = 0.
    """
    nxt = sigmas[1:]
    t_next = schedule.timestep(nxt).round().clamp(min=0).float()
    s = torch.floor((1.0 - eta) * t_next)  # float32, exactly as diffusers' TCDScheduler computes it
    sig_s = schedule.sigma(s).to(sigmas.dtype)
    return torch.where(nxt > 0, torch.minimum(sig_s, nxt), torch.zeros_like(nxt))


def tscd_renoise_std(sigmas: torch.Tensor, sig_s: torch.Tensor) -> torch.Tensor:
    """Std of the noise each TSCD step adds after its jump to sigma_s to land back on the next
    sigma: sqrt(sigma_next^2 - sigma_s^2) per step (``sig_s`` from :func:`tscd_jump_sigmas`)."""
    return (sigmas[1:] ** 2 - sig_s**2).clamp(min=0).sqrt()


def _has_values(t: torch.Tensor) -> bool:
    """False for tensors without data to check (fake tensors of a memory count, meta tensors)."""
    if t.device.type == "meta":
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - every torch this project supports has it
        return True
    return not is_fake(t)


def check_sampler_inputs(x, sigmas, values: bool = True) -> None:
    """ValueError naming the argument for inputs a sampler cannot use.

    Shapes always; with ``values``, also NaN/Inf in x and a sigma schedule that is not finite,
    non-negative and non-increasing (a host sync: callers inside a captured graph pass False)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(
            f"x must be a batch of latents shaped (batch, channels, ...), got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or sigmas.shape[0] < 2:
        raise ValueError(
            f"sigmas must be a 1-D schedule of at least 2 values (start ... end), got "
            f"{tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__}: "
            "steps must be >= 1"
        )
    if values and not torch.compiler.is_compiling() and _has_values(x) and _has_values(sigmas):
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x holds NaN or Inf values; check the input latent or noise")
        if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()) or bool((sigmas[1:] > sigmas[:-1]).any()):
            raise ValueError(f"sigmas must be finite, >= 0 and non-increasing, got {sigmas.tolist()}")


@torch.no_grad()
def check_eta(eta) -> float:
    """eta (TCD's gamma) as a float, or a ValueError: it must lie in [0, 1]."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (TCD's gamma), got {eta!r}")
    return float(eta)


def sample_tscd(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta: float = 0.3,
    noise_sampler: Optional[NoiseSampler] = None,
    schedule: Optional[VPSchedule] = None,
    rescale_start: bool = False,
    check_inputs: bool = True,
):
    """TSCD/TCD multistep sampling (Hyper-SD 2404.13686; TCD 2402.19159), gamma = ``eta``.

    Each step predicts x0, jumps deterministically down to s = floor((1-eta)*t_next), then
    re-noises up to t_next with seeded noise. eta=0 is DDIM; eta=1 is LCM-like.
    ``check_inputs=False`` skips the value checks' host sync (see :func:`check_sampler_inputs`).
    """
    check_eta(eta)
    check_sampler_inputs(x, sigmas, values=check_inputs)
    extra_args = {} if extra_args is None else extra_args
    schedule = schedule or default_schedule()
    if noise_sampler is None and eta > 0:
        noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    if rescale_start:
        x = x * comfyui_start_correction(sigmas[0])
    n = len(sigmas) - 1
    sig_s = tscd_jump_sigmas(sigmas, float(eta), schedule)
    noise_std = tscd_renoise_std(sigmas, sig_s)
    s_in = x.new_ones([x.shape[0]], dtype=sigmas.dtype)  # sigma keeps its precision for fp16/bf16 x
    for i in _progress(range(n), disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        eps = (x - denoised) / sigmas[i]
        x = denoised + sig_s[i] * eps
        if eta > 0 and i < n - 1:
            x = x + noise_std[i] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


@torch.no_grad()
def sample_dmd_onestep(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    rescale_start: bool = False,
    check_inputs: bool = True,
):
    """One-step generation (DMD / Hyper-SD 1-step): one model call at sigmas[0], return x0.

    Longer schedules use their first and last sigma only.

    ``rescale_start`` corrects ComfyUI's sigma*z starting noise below sigma_max to the
    unit-variance model input diffusers uses (needed for the 1-step UNet at t=800).
    """
    extra_args = {} if extra_args is None else extra_args
    check_sampler_inputs(x, sigmas, values=check_inputs)
    if rescale_start:
        x = x * comfyui_start_correction(sigmas[0])
    s_in = x.new_ones([x.shape[0]], dtype=sigmas.dtype)  # sigma keeps its precision for fp16/bf16 x
    denoised = model(x, sigmas[0] * s_in, **extra_args)
    if callback is not None:
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
    # Land at sigmas[-1] along the predicted trajectory: x0 itself when it is 0.
    return denoised + sigmas[-1] * (x - denoised) / sigmas[0]


def _progress(it, disable):
    if disable is False:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional; ComfyUI ships it
            return it
        return tqdm(it)
    return it


TIMESTEP_SPACINGS = ("trailing", "tcd")


def get_sigmas_tscd(
    steps: int,
    schedule: Optional[VPSchedule] = None,
    spacing: str = "trailing",
    denoise: float = 1.0,
    original_steps: int = 50,
    final: str = "zero",
    dtype=torch.float32,
    onestep_timestep: Optional[int] = None,
) -> torch.Tensor:
    """Sigma schedule for :func:`sample_tscd`.

    spacing="trailing": DDIM trailing (the N-step Hyper-SD LoRAs, TSCD segment starts);
    spacing="tcd": diffusers TCDScheduler's choice (the unified 1-step LoRA with TCD).
    ``denoise`` < 1 is img2img: trailing keeps the last ``steps`` of steps/denoise steps (as
    ComfyUI's schedulers do); tcd uses TCD's ``strength``.
    ``onestep_timestep``: the timestep a LoRA was trained to take its single step from (its
    header's, e.g. 800); one step at denoise 1 is then :func:`get_sigmas_onestep` there.
    """
    schedule = schedule or default_schedule()
    T = schedule.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, {T}], got {steps!r}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if onestep_timestep is not None and steps == 1 and denoise == 1.0:
        return get_sigmas_onestep(onestep_timestep, schedule, dtype=dtype)
    if spacing == "trailing":
        total = max(steps, int(steps / denoise))  # ComfyUI: total_steps = int(steps/denoise)
        ts = trailing_timesteps(total, T)[-steps:] if total != steps else trailing_timesteps(steps, T)
    elif spacing == "tcd":
        ts = tcd_timesteps(steps, original_steps=original_steps, strength=denoise, num_train_timesteps=T)
    else:
        raise ValueError(f"spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return schedule.sigmas_for_timesteps(ts, final=final, dtype=dtype)


def get_sigmas_onestep(timestep: int = 999, schedule: Optional[VPSchedule] = None, dtype=torch.float32) -> torch.Tensor:
    """[sigma(timestep), 0]: one step at t (999 for ByteDance's unified LoRA; 800 for the SDXL 1-step UNet
    and our dmd/unified LoRAs, whose header names it as ``onestep_timestep``)."""
    schedule = schedule or default_schedule()
    if not 1 <= int(timestep) < schedule.num_train_timesteps:
        raise ValueError(
            f"timestep must be in [1, {schedule.num_train_timesteps - 1}], got {timestep}: 800 for the SDXL 1-step "
            "UNet and our dmd/unified LoRAs, 999 for ByteDance's unified LoRA"
        )
    return schedule.sigmas_for_timesteps([int(timestep)], final="zero", dtype=dtype)
