"""TSCD training math against the sampler on an analytic Gaussian case.

Data x0 ~ N(0, s^2 I) has the exact eps-prediction eps*(x_t, t) = sigma_t x_t / (alpha_t^2 s^2 +
sigma_t^2), so the teacher's DDIM steps are scalar maps. A student that jumps every grid point
straight to the teacher's DDIM solution at its segment edge must get zero TSCD loss, and our
TSCD sampler with that student at k steps must reproduce the teacher's N-step DDIM result.
"""

import pytest
import torch

from hypersd_core.losses import consistency_loss
from hypersd_core.parameterization import DiscreteVPDenoiser, add_noise
from hypersd_core.samplers import get_sigmas_tscd, sample_tscd
from hypersd_core.schedule import VPSchedule
from hypersd_core.segments import SegmentGrid
from hypersd_core.tscd import (
    adversarial_timesteps,
    consistency_target,
    jump_to,
    mixed_tscd_timesteps,
    perturb_noise,
    renoise_in_segment,
    student_edge_prediction,
    teacher_ddim_step,
    tscd_timesteps,
)

S2 = 0.7  # data variance
SCHED = VPSchedule.scaled_linear()


def exact_eps(x, t):
    a, s = SCHED.alpha_sigma(t, dtype=torch.float64)
    a, s = a.reshape(-1, 1), s.reshape(-1, 1)
    return s * x / (a * a * S2 + s * s)


def ddim_factor(t, t_to):
    """x_{t_to} = c * x_t for one exact-teacher DDIM step (float64 scalar)."""
    x = torch.ones(1, 1, dtype=torch.float64)
    tt = torch.tensor([t])
    return float(jump_to(exact_eps(x, tt), x, tt, torch.tensor([t_to]), SCHED))


def consistent_student(grid):
    """eps_theta(x, tau_i) = a_i x such that the edge jump equals the teacher's DDIM solution."""
    coef = {}
    for i in range(grid.num_solver_steps):
        g = 1.0
        for j in range(i, grid.edge_index(i) - 1, -1):
            g *= ddim_factor(grid.timestep(j), grid.timestep(j - 1))
        t, te = grid.timestep(i), grid.edge_timestep(i)
        a_t, s_t = (float(v) for v in SCHED.alpha_sigma(torch.tensor(t), dtype=torch.float64))
        a_e, s_e = (float(v) for v in SCHED.alpha_sigma(torch.tensor(te), dtype=torch.float64))
        coef[t] = (g - a_e / a_t) / (s_e - a_e * s_t / a_t)

    def eps(x, t):
        c = torch.tensor([coef.get(int(round(float(v))), 0.0) for v in t.reshape(-1)], dtype=x.dtype)
        return c.reshape(-1, *([1] * (x.ndim - 1))) * x

    return eps


@pytest.mark.parametrize("k", [8, 4, 2, 1])
def test_consistent_student_has_zero_loss(k):
    grid = SegmentGrid(40, k)
    student = consistent_student(grid)
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(40)
    ts = tscd_timesteps(grid, idx)
    x0 = torch.randn(40, 6, generator=gen, dtype=torch.float64) * S2**0.5
    a, s = SCHED.alpha_sigma(ts.t, dtype=torch.float64)
    x_t = add_noise(x0, torch.randn(40, 6, generator=gen, dtype=torch.float64), a, s)
    pred = student_edge_prediction(student(x_t, ts.t), x_t, ts, SCHED)
    e = exact_eps(x_t, ts.t)
    x_prev = teacher_ddim_step(e, e, 3.0, x_t, ts, SCHED)  # equal cond/uncond: guidance is a no-op
    tgt = consistency_target(x_prev, student(x_prev, ts.t_prev.clamp(min=0)), ts, SCHED)
    assert consistency_loss(pred, tgt, "mse").item() < 1e-20
    # A wrong student (off by 5%) is not consistent.
    bad = student_edge_prediction(1.05 * student(x_t, ts.t), x_t, ts, SCHED)
    assert consistency_loss(bad, tgt, "mse").item() > 1e-6


@pytest.mark.parametrize("k", [8, 4, 2, 1])
def test_sampler_with_consistent_student_reproduces_teacher_ddim(k):
    grid = SegmentGrid(40, k)
    student = consistent_student(grid)
    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = x_T.clone()
    for i in range(39, -1, -1):
        ref = ref * ddim_factor(grid.timestep(i), grid.timestep(i - 1))
    model = DiscreteVPDenoiser(student, SCHED, "epsilon")
    sigmas = get_sigmas_tscd(k, SCHED, "trailing", dtype=torch.float64)
    assert [round(float(t)) for t in SCHED.timestep(sigmas[:-1])] == grid.segment_starts()
    out = sample_tscd(model, x_T * (sigmas[0] ** 2 + 1).sqrt(), sigmas, eta=0.0, schedule=SCHED)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # float64 through the VE wrapper


def test_boundary_target_is_teacher_step_and_needs_no_target_net():
    grid = SegmentGrid(8, 4)
    ts = tscd_timesteps(grid, torch.tensor([0, 2, 4, 6]))
    assert ts.boundary.all() and torch.equal(ts.t_prev, ts.t_edge)
    x_prev = torch.randn(4, 2)
    assert torch.equal(consistency_target(x_prev, None, ts, SCHED), x_prev)
    ts2 = tscd_timesteps(grid, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target_output"):
        consistency_target(x_prev[:2], None, ts2, SCHED)
    # Mixed batch: boundary rows keep x_prev, others use the target network.
    out = consistency_target(x_prev[:2], torch.zeros(2, 2), ts2, SCHED)
    assert torch.equal(out[0], x_prev[0]) and not torch.equal(out[1], x_prev[1])


def test_segment_zero_edge_is_clean_and_timesteps():
    grid = SegmentGrid(40, 4)
    ts = tscd_timesteps(grid, torch.tensor([0, 5, 9, 10, 39]))
    assert ts.t.tolist() == [24, 149, 249, 274, 999]
    assert ts.t_edge.tolist() == [-1, -1, -1, 249, 749]
    assert ts.t_prev.tolist() == [-1, 124, 224, 249, 974]
    assert ts.boundary.tolist() == [True, False, False, True, False]
    x0, eps = torch.randn(5, 3), torch.randn(5, 3)
    a, s = SCHED.alpha_sigma(ts.t)
    # Clean edge: the jump returns x0_hat itself.
    pred = student_edge_prediction(eps, add_noise(x0, eps, a, s), ts, SCHED)
    torch.testing.assert_close(pred[:3], x0[:3], rtol=1e-4, atol=1e-4)


def test_adversarial_renoise_stays_in_segment():
    grid = SegmentGrid(40, 4)
    ts = tscd_timesteps(grid, torch.arange(40))
    t_a = adversarial_timesteps(ts, grid, torch.rand(40, generator=torch.Generator().manual_seed(0)))
    assert bool((t_a >= ts.t_edge.clamp(min=0)).all()) and bool((t_a < ts.t_edge + 250).all())
    x = torch.randn(40, 3)
    same = renoise_in_segment(x, ts.t_edge, ts.t_edge, torch.randn(40, 3), SCHED)
    torch.testing.assert_close(same, x)  # no time elapsed: no noise added
    z = torch.randn(4000, 1)
    te, ta = torch.full((4000,), 249), torch.full((4000,), 499)
    y = renoise_in_segment(torch.zeros(4000, 1), te, ta, z, SCHED)
    expect = (1 - SCHED.alpha_bar(499) / SCHED.alpha_bar(249)).sqrt()
    assert abs(y.std().item() - float(expect)) < 0.03


def test_mixed_batch_takes_each_samples_own_segmentation():
    grids = [SegmentGrid(40, k) for k in (1, 2, 4, 8)]
    index = torch.arange(40).repeat(4)
    which = torch.arange(4).repeat_interleave(40)
    ts, segments = mixed_tscd_timesteps(grids, index, which)
    for j, g in enumerate(grids):
        own = tscd_timesteps(g, torch.arange(40))
        rows = slice(40 * j, 40 * (j + 1))
        for field in ("t", "t_prev", "t_edge", "boundary"):
            assert torch.equal(getattr(ts, field)[rows], getattr(own, field)), (g.num_segments, field)
        assert bool((segments[rows] == g.num_segments).all())
    # the discriminator's re-noise window follows each sample's own segment length (T/k)
    t_a = adversarial_timesteps(ts, grids[0], torch.full((160,), 0.999), segments)
    assert bool((t_a < ts.t_edge + 1000 // segments).all()) and bool((t_a >= ts.t_edge.clamp(min=0)).all())
    with pytest.raises(ValueError, match="one solver grid"):
        mixed_tscd_timesteps([SegmentGrid(40, 2), SegmentGrid(80, 2)], index[:2], which[:2] * 0)


def test_perturb_noise():
    n = torch.zeros(20000)
    assert perturb_noise(n, 0.0) is n
    p = perturb_noise(n, 0.1, torch.Generator().manual_seed(0))
    assert abs(p.std().item() - 0.1) < 0.005
