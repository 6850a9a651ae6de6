"""sample_tscd + DiscreteVPDenoiser against diffusers' TCDScheduler, step for step (CPU, fp32).

What is compared:
- each intermediate x: diffusers' VP sample at t_i divided by alpha_{t_i} (VP -> VE) against
  the x our sampler holds before step i (from its callback);
- each x0: diffusers' pred_original_sample at t_i against our denoised at step i; with a
  schedule ending at 0 our output *is* the last x0;
- the exact diffusers output: our sigma schedule ends at sigma(t=0) (final="t0"), and our output
  equals diffusers' final sample divided by alpha_0.
Per-step noise: our noise_sampler draws diffusers' randn_tensor from a generator seeded the same,
in the same order, so both runs add the same tensors.
"""

import pytest
import torch
from diffusers import TCDScheduler

from hypersd_core.parameterization import DiscreteVPDenoiser
from hypersd_core.samplers import sample_tscd
from hypersd_core.schedule import VPSchedule

from .models import SD, VPNet, diffusers_noise_sampler, diffusers_tcd

SEED = 5


def run_pair(unet, z, cond, steps, eta, residual=True, own_table=False, prediction_type="epsilon"):
    sch = TCDScheduler(**SD, prediction_type=prediction_type)
    sch.set_timesteps(steps)
    ref_net = VPNet(unet, residual)
    samples, x0s, final = diffusers_tcd(ref_net, sch, z, cond, eta, SEED)

    # Same table as diffusers (as k-diffusion wrappers take the model's alphas_cumprod), or ours.
    schedule = VPSchedule.scaled_linear() if own_table else VPSchedule(sch.alphas_cumprod)
    net = VPNet(unet, residual)
    model = DiscreteVPDenoiser(net, schedule, prediction_type)
    sigmas = schedule.sigmas_for_timesteps(sch.timesteps.tolist(), final="t0")
    steps_seen = []
    alpha = lambda t: sch.alphas_cumprod[t].sqrt()
    out = sample_tscd(
        model,
        z / alpha(sch.timesteps[0]),
        sigmas,
        extra_args={"cond": cond},
        callback=steps_seen.append,
        eta=eta,
        noise_sampler=diffusers_noise_sampler(z.shape, SEED),
        schedule=schedule,
    )
    d = {
        "x": max(float((s["x"] - r / alpha(t)).abs().max()) for s, r, t in zip(steps_seen, samples, sch.timesteps)),
        "x0": max(float((s["denoised"] - r).abs().max()) for s, r in zip(steps_seen, x0s)),
        "final": float((out - final / alpha(0)).abs().max()),
        "peak": max(float(r.abs().max()) for r in x0s + [s / alpha(t) for s, t in zip(samples, sch.timesteps)]),
    }
    return d, net.timesteps, sch.timesteps


@pytest.mark.parametrize("steps", range(1, 9))
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_tcd_step_for_step(unet, z, cond, eta, steps):
    d, ts_ours, ts_ref = run_pair(unet, z, cond, steps, eta)
    # The float timesteps our wrapper passes equal diffusers' integer ones exactly.
    assert [float(t) for t in ts_ours] == [float(t) for t in ts_ref]
    assert d["x"] <= 1e-5, d
    assert d["x0"] <= 1e-5, d
    assert d["final"] <= 1e-5, d


@pytest.mark.parametrize("steps, eta", [(1, 0.3), (4, 0.3), (8, 1.0)])
def test_tcd_raw_random_unet_within_float32_resolution(unet, z, cond, steps, eta):
    """A bare random UNet drives |x0| to ~50: bound the error relative to the largest value."""
    d, _, _ = run_pair(unet, z, cond, steps, eta, residual=False)
    assert d["peak"] > 20  # the regime this test is about
    assert max(d["x"], d["x0"], d["final"]) <= 2e-6 * d["peak"], d


@pytest.mark.parametrize("steps, eta", [(1, 0.0), (4, 0.3), (8, 1.0)])
def test_tcd_with_our_float64_table(unet, z, cond, steps, eta):
    """Our float64 alphas_cumprod differs from diffusers' float32 cumprod by <= 9.3e-7 relative;
    at t = 999 (|x_ve| ~ 60) that is a few float32 ulp, so the bound is 3e-5 here."""
    d, ts_ours, ts_ref = run_pair(unet, z, cond, steps, eta, own_table=True)
    assert [float(t) for t in ts_ours] == [float(t) for t in ts_ref]
    assert max(d["x"], d["x0"], d["final"]) <= 3e-5, d


def test_final_zero_returns_last_x0(unet, z, cond):
    """With a schedule ending at 0 (ComfyUI's), the output is the last step's x0, not diffusers'
    s = 0 sample, which is x0 + sigma(0)*eps (~0.029*eps) away."""
    sch = TCDScheduler(**SD)
    sch.set_timesteps(4)
    schedule = VPSchedule(sch.alphas_cumprod)
    model = DiscreteVPDenoiser(VPNet(unet, True), schedule)
    seen = []
    x_ve = z / sch.alphas_cumprod[999].sqrt()
    zero = schedule.sigmas_for_timesteps(sch.timesteps.tolist(), final="zero")
    out = sample_tscd(
        model,
        x_ve,
        zero,
        extra_args={"cond": cond},
        callback=seen.append,
        eta=0.3,
        noise_sampler=diffusers_noise_sampler(z.shape, SEED),
        schedule=schedule,
    )
    assert torch.equal(out, seen[-1]["denoised"])
    t0 = schedule.sigmas_for_timesteps(sch.timesteps.tolist(), final="t0")
    out_t0 = sample_tscd(
        model,
        x_ve,
        t0,
        extra_args={"cond": cond},
        eta=0.3,
        noise_sampler=diffusers_noise_sampler(z.shape, SEED),
        schedule=schedule,
    )
    assert 1e-3 < float((out_t0 - out).abs().max()) < 0.2
