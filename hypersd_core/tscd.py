"""Training math of Trajectory Segmented Consistency Distillation, torch only.

One TSCD step on grid index i (see segments.py): the student's prediction at t = tau_i jumped to
its segment's lower edge t_e; the teacher's guided DDIM step t -> t' = tau_{i-1}; the target,
which is the teacher's x_{t'} itself when t' is the edge (the boundary case) and otherwise the
target network's prediction at t' jumped to the same edge. Every formula comes from
parameterization.py, the same functions the samplers use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .parameterization import cfg_combine, jump, per_sample, renoise, to_x0_eps
from .schedule import VPSchedule
from .segments import SegmentGrid


@dataclass
class TSCDTimesteps:
    """Per-sample grid quantities of one batch (integer timesteps; -1 = clean data)."""

    index: torch.Tensor  # i
    t: torch.Tensor  # tau_i
    t_prev: torch.Tensor  # tau_{i-1}
    t_edge: torch.Tensor  # tau_{e-1}
    boundary: torch.Tensor  # bool: t_prev == t_edge

    def to(self, device) -> "TSCDTimesteps":
        return TSCDTimesteps(*(v.to(device) for v in (self.index, self.t, self.t_prev, self.t_edge, self.boundary)))


def tscd_timesteps(grid: SegmentGrid, index: torch.Tensor) -> TSCDTimesteps:
    """Timesteps of grid indices ``index`` (an int64 tensor)."""
    index = index.long()
    return TSCDTimesteps(
        index, grid.timestep(index), grid.timestep(index - 1), grid.edge_timestep(index), grid.is_boundary(index)
    )


def jump_to(model_output, x_t, t, t_to, schedule: VPSchedule, prediction_type: str = "epsilon"):
    """Predict (x0, eps) at timestep t and jump deterministically to timestep t_to (DDIM)."""
    a_t, s_t = schedule.alpha_sigma(t, dtype=x_t.dtype, device=x_t.device)
    a_to, s_to = schedule.alpha_sigma(t_to, dtype=x_t.dtype, device=x_t.device)
    x0, eps = to_x0_eps(model_output, x_t, a_t, s_t, prediction_type)
    return jump(x0, eps, a_to, s_to)


def student_edge_prediction(
    model_output, x_t, ts: TSCDTimesteps, schedule: VPSchedule, prediction_type: str = "epsilon"
):
    """The student's prediction at t jumped to its segment edge t_e."""
    return jump_to(model_output, x_t, ts.t, ts.t_edge, schedule, prediction_type)


def teacher_ddim_step(
    cond_output, uncond_output, guidance, x_t, ts: TSCDTimesteps, schedule: VPSchedule, prediction_type: str = "epsilon"
):
    """One guided DDIM step of the teacher, t -> t' (``uncond_output`` None: no guidance).

    Guidance combines model outputs, as diffusers and ComfyUI do for eps models.
    """
    out = cond_output if uncond_output is None else cfg_combine(cond_output, uncond_output, guidance)
    return jump_to(out, x_t, ts.t, ts.t_prev, schedule, prediction_type)


def consistency_target(
    x_prev, target_output, ts: TSCDTimesteps, schedule: VPSchedule, prediction_type: str = "epsilon"
):
    """The TSCD target at the edge: x_{t'} where t' is the edge, else the target network's
    prediction at t' jumped to t_e. ``target_output`` may be None when every sample is a boundary
    one, or hold outputs for the whole batch (boundary rows are ignored)."""
    if target_output is None:
        if not bool(ts.boundary.all()):
            raise ValueError("target_output is needed unless every sample is on a segment boundary")
        return x_prev
    tgt = jump_to(target_output, x_prev, ts.t_prev, ts.t_edge, schedule, prediction_type)
    mask = per_sample(ts.boundary, x_prev, cast=False)
    return torch.where(mask, x_prev, tgt)


def mixed_tscd_timesteps(grids: list[SegmentGrid], index: torch.Tensor, which: torch.Tensor):
    """Timesteps of a batch whose sample b uses ``grids[which[b]]`` (all on one solver grid), and the
    per-sample segment counts: one batch trains several segmentations at once."""
    n = {g.num_solver_steps for g in grids}
    if len(n) != 1:
        raise ValueError(f"mixed segmentations must share one solver grid, got {sorted(n)} steps")
    all_ts = [tscd_timesteps(g, index) for g in grids]
    which = which.long().to(index.device)
    pick = lambda field: torch.stack([getattr(t, field) for t in all_ts]).gather(0, which[None])[0]  # noqa: E731
    segments = torch.tensor([g.num_segments for g in grids], device=index.device)[which]
    return TSCDTimesteps(index.long(), all_ts[0].t, all_ts[0].t_prev, pick("t_edge"), pick("boundary")), segments


def adversarial_timesteps(
    ts: TSCDTimesteps, grid: SegmentGrid, u: torch.Tensor, segments: torch.Tensor | None = None
) -> torch.Tensor:
    """t_a = t_e + floor(u*T/k) in [t_e, t_e + T/k), clamped to >= 0 (a valid UNet timestep);
    ``segments``: per-sample k of a mixed batch (default: the grid's)."""
    k = grid.num_segments if segments is None else segments.to(ts.t_edge.device)
    span = grid.num_train_timesteps // k
    t_a = ts.t_edge + torch.floor(u.to(torch.float64).to(ts.t_edge.device) * span).long()
    return t_a.clamp(min=0, max=grid.num_train_timesteps - 1)


def renoise_in_segment(x_edge, t_edge, t_a, noise, schedule: VPSchedule):
    """Re-noise a sample at its edge t_e forward to t_a (t_a >= t_e), for the discriminator."""
    ab_e = schedule.alpha_bar(t_edge).to(device=x_edge.device)
    ab_a = schedule.alpha_bar(t_a).to(device=x_edge.device)
    return renoise(x_edge, noise, ab_e.to(x_edge.dtype), ab_a.to(x_edge.dtype))


def perturb_noise(noise: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise perturbation for stability (input perturbation): eps + strength * xi, xi ~ N(0, I)."""
    if strength <= 0:
        return noise
    xi = torch.randn(
        noise.shape, generator=generator, dtype=noise.dtype, device="cpu" if generator is not None else noise.device
    )
    return noise + strength * xi.to(noise.device)
