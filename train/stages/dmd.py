"""DMD2-style score distillation for one-step generation, as the last part of Hyper-SD.

Generator: the student LoRA at one step (t = 999, ``sample_dmd_onestep``'s model call) maps unit
noise z to x. Per generator update, with t ~ U[t_min, t_max] and x_t = α_t x + σ_t ε:
- real score: the teacher (the base UNet with every adapter disabled) with CFG gives μ_real;
- fake score: a second LoRA adapter (``fake``) on the same base UNet gives μ_fake;
- generator loss: ``hypersd_core.losses.dmd_loss(x, μ_real, μ_fake)`` (DMD2's normalised
  gradient), plus Hyper-SD's MSE regulariser ``reg_weight·‖x − x_ref‖²`` to paired references
  x_ref = the teacher's multi-step (CFG, DDIM) sample from the same noise, precomputed once
  per stage into a small bank (DMD's regression loss);
- fake updates (``fake_updates`` per generator update, two time-scale): the fake adapter learns
  the ordinary denoising loss on detached generator samples.

Memory plan for SDXL on one GPU (an analytic ESTIMATE, not measured: no GPU was available).
Teacher, fake score and generator share ONE base UNet; only LoRA adapters differ
(``student`` trainable in the generator step, ``fake`` trainable in fake steps, none for the
teacher: ``use_adapter`` switches in place, no copies):
- base SDXL UNet weights, bf16: 2.57e9 params x 2 B                               ~ 5.1 GB
- two LoRA adapters, rank 64 on attention projections + FF (about 93M params each
  by the count in ``lora_parameter_count``), fp32 weights + grads + AdamW m, v = 16 B/param
                                                                                   ~ 3.0 GB
- activations, 1024² (128² latents), batch 1, gradient checkpointing: the generator forward
  with grad plus the real (CFG: batch 2) and fake forwards under no_grad, peak about
                                                                                   ~ 8-12 GB
- VAE decoder with grad for feedback terms at 1024² (slicing/tiling off)           ~ 6-10 GB
- CUDA context / allocator slack                                                   ~ 2 GB
Total: about 16-22 GB without feedback, 24-32 GB with the VAE-decoded feedback term: one
40-80 GB GPU. The text encoders are not needed when prompt embeddings are cached. The
regression bank holds latents only (4x128x128 fp16 = 128 KB per pair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
import torch.nn.functional as F

from hypersd_core.losses import dmd_loss
from hypersd_core.parameterization import add_noise, to_x0_eps
from hypersd_core.schedule import VPSchedule

from .adapters import use_adapter


@dataclass
class DMDOptions:
    """DMD settings (``dmd:`` in a stage config)."""

    onestep_timestep: int = 999
    t_range: list = field(default_factory=lambda: [0.02, 0.98])  # share of T for the diffusion t
    real_cfg: float = 4.5  # teacher guidance for mu_real (diffusers convention: 1 = none)
    fake_updates: int = 5  # fake-score updates per generator update
    fake_lr: float | None = None  # None: the stage's learning rate
    dm_weight: float = 1.0
    reg_weight: float = 0.25  # Hyper-SD's MSE regulariser to paired teacher samples
    reg_steps: int = 25  # teacher DDIM steps for the reference samples
    reg_cfg: float | None = None  # None: real_cfg
    reg_pairs: int = 64  # size of the precomputed (noise, prompt, x_ref) bank
    fake_adapter: str = "fake"

    def __post_init__(self):
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"dmd.t_range must satisfy 0 <= lo < hi <= 1, got {self.t_range}")
        if self.fake_updates < 1:
            raise ValueError(f"dmd.fake_updates must be >= 1, got {self.fake_updates}")


def unet_x0(unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, schedule: VPSchedule,
            prediction_type: str = "epsilon", uncond: torch.Tensor | None = None, cfg: float = 1.0,
            added_cond: dict | None = None, added_uncond: dict | None = None) -> torch.Tensor:
    """x̂0 of a VP sample x_t at integer timesteps t from the UNet as it is switched now."""
    from train.sampling import GuidedUNet

    out = GuidedUNet(unet, cond, uncond, cfg, added_cond, added_uncond)(x_t, t)
    alpha, sigma = schedule.alpha_sigma(t, dtype=x_t.dtype, device=x_t.device)
    return to_x0_eps(out, x_t, alpha, sigma, prediction_type)[0]


def generate_onestep(unet, noise: torch.Tensor, cond: torch.Tensor, schedule: VPSchedule, timestep: int = 999,
                     prediction_type: str = "epsilon", added_cond: dict | None = None) -> torch.Tensor:
    """The generator: one model call at ``timestep`` on unit-variance VP noise -> x̂0 (with grad).

    Equals ``sample_dmd_onestep`` on x = z·sqrt(1 + σ²) (the diffusers start), so training and
    sampling agree.
    """
    t = torch.full((noise.shape[0],), int(timestep), device=noise.device, dtype=torch.long)
    return unet_x0(unet, noise, t, cond, schedule, prediction_type, added_cond=added_cond)


def sample_t(batch: int, opts: DMDOptions, T: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    lo, hi = int(opts.t_range[0] * T), max(int(opts.t_range[0] * T) + 1, int(opts.t_range[1] * T))
    return torch.randint(lo, hi, (batch,), generator=generator).to(device)


def diffuse(x: torch.Tensor, t: torch.Tensor, schedule: VPSchedule, generator: torch.Generator | None = None):
    """(x_t, eps) with x_t = alpha_t x + sigma_t eps."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    alpha, sigma = schedule.alpha_sigma(t, dtype=x.dtype, device=x.device)
    return add_noise(x, eps, alpha, sigma), eps


def distribution_matching(unet, x: torch.Tensor, cond, uncond, opts: DMDOptions, schedule: VPSchedule,
                          student: str, prediction_type: str = "epsilon", generator=None,
                          added_cond=None, added_uncond=None) -> torch.Tensor:
    """DMD2's generator loss on generator samples x (grad flows into x only).

    Leaves the UNet switched to the ``student`` adapter.
    """
    t = sample_t(x.shape[0], opts, schedule.num_train_timesteps, generator, x.device)
    with torch.no_grad():
        x_t, _ = diffuse(x.detach(), t, schedule, generator)
        use_adapter(unet, None)
        mu_real = unet_x0(unet, x_t, t, cond, schedule, prediction_type, uncond, opts.real_cfg, added_cond, added_uncond)
        use_adapter(unet, opts.fake_adapter)
        mu_fake = unet_x0(unet, x_t, t, cond, schedule, prediction_type, added_cond=added_cond)
    use_adapter(unet, student, _params_of(unet, student))
    return dmd_loss(x, mu_real, mu_fake)


def fake_score_loss(unet, x: torch.Tensor, cond, opts: DMDOptions, schedule: VPSchedule,
                    prediction_type: str = "epsilon", generator=None, added_cond=None) -> torch.Tensor:
    """Denoising loss of the fake adapter on detached generator samples (its own prediction space).

    The caller switches the UNet to the fake adapter first (``use_adapter``).
    """
    from train.sampling import GuidedUNet

    x = x.detach()
    t = sample_t(x.shape[0], opts, schedule.num_train_timesteps, generator, x.device)
    x_t, eps = diffuse(x, t, schedule, generator)
    out = GuidedUNet(unet, cond, added_cond=added_cond)(x_t, t)
    alpha, sigma = schedule.alpha_sigma(t, dtype=x.dtype, device=x.device)
    a, s = alpha.view(-1, *[1] * (x.ndim - 1)), sigma.view(-1, *[1] * (x.ndim - 1))
    target = {"epsilon": eps, "v_prediction": a * eps - s * x, "sample": x}[prediction_type]
    return F.mse_loss(out.float(), target.float())


def regression_loss(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Hyper-SD's MSE regulariser: the one-step output against its paired multi-step reference."""
    return F.mse_loss(x.float(), x_ref.float())


@torch.no_grad()
def build_reference_bank(unet, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, *,
                         steps: int, cfg: float, schedule: VPSchedule, prediction_type: str = "epsilon",
                         chunk: int = 16) -> torch.Tensor:
    """Teacher (adapters disabled) multi-step DDIM samples from ``noise``, in chunks."""
    from train.sampling import sample_images

    out = []
    for i in range(0, noise.shape[0], chunk):
        sl = slice(i, i + chunk)
        use_adapter(unet, None)
        out.append(sample_images(unet, noise[sl], cond[sl], None if uncond is None else uncond[sl], steps=steps,
                                 cfg=cfg, eta=0.0, spacing="trailing", schedule=schedule,
                                 prediction_type=prediction_type))
    return torch.cat(out)


def lora_parameter_count(unet, name: str) -> int:
    """Number of parameters of adapter ``name`` (for the memory estimate)."""
    return sum(p.numel() for p in _params_of(unet, name))


def _params_of(unet, name: str):
    from .adapters import adapter_parameters

    return adapter_parameters(unet, name)

