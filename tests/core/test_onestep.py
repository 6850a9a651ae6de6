"""One-step sampling: LCMScheduler parity at t = 800 and the noise-scaling trap.

ComfyUI starts a schedule below sigma_max from x = sigma*z, whose model input
x/sqrt(1+sigma^2) is sqrt(1-alpha_bar)*z, not the unit noise z diffusers feeds the model.
sample_dmd_onestep(rescale_start=True) turns sigma*z into sqrt(1+sigma^2)*z first.
"""

import pytest
import torch
from diffusers import LCMScheduler

from hypersd_core.parameterization import DiscreteVPDenoiser
from hypersd_core.samplers import get_sigmas_onestep, get_sigmas_tscd, sample_dmd_onestep
from hypersd_core.schedule import VPSchedule

from .models import SD, VPNet


def lcm_onestep(net, z, cond, timestep):
    """diffusers: LCMScheduler(timesteps=[t]), one step from unit noise -> denoised."""
    sch = LCMScheduler(**SD)
    sch.set_timesteps(timesteps=[timestep])
    t = sch.timesteps[0]
    return sch.step(net(z, t, cond), t, z).denoised, sch


def comfy_start(z, sigmas, schedule):
    """ComfyUI's noise scaling: sqrt(1+sigma^2)*z at sigma_max, sigma*z below it."""
    s0 = sigmas[0]
    return z * ((1 + s0**2).sqrt() if torch.isclose(s0, torch.tensor(schedule.sigma_max).float()) else s0)


def test_lcm_onestep_t800_parity(unet, z, cond):
    ref, sch = lcm_onestep(VPNet(unet, residual=True), z, cond, 800)
    schedule = VPSchedule(sch.alphas_cumprod)
    net = VPNet(unet, residual=True)
    sigmas = get_sigmas_onestep(800, schedule)
    out = sample_dmd_onestep(
        DiscreteVPDenoiser(net, schedule),
        comfy_start(z, sigmas, schedule),
        sigmas,
        extra_args={"cond": cond},
        rescale_start=True,
    )
    assert float(net.timesteps[0]) == 800.0
    assert float((net.inputs[0] - z).abs().max()) < 1e-6  # the model sees unit noise, as in diffusers
    # LCM's boundary scalings at t = 800 are c_skip ~ 4e-9, c_out ~ 1 - 2e-9: denoised ~ x0.
    assert float((out - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("rescale", [True, False])
def test_without_rescale_the_result_differs(unet, z, cond, rescale):
    """The bare random UNet (its x0 does not cancel the input) makes the trap visible."""
    ref, sch = lcm_onestep(VPNet(unet), z, cond, 800)
    schedule = VPSchedule(sch.alphas_cumprod)
    net = VPNet(unet)
    sigmas = get_sigmas_onestep(800, schedule)
    out = sample_dmd_onestep(
        DiscreteVPDenoiser(net, schedule),
        comfy_start(z, sigmas, schedule),
        sigmas,
        extra_args={"cond": cond},
        rescale_start=rescale,
    )
    diff, peak = float((out - ref).abs().max()), float(ref.abs().max())
    if rescale:
        assert diff <= 2e-6 * peak
    else:
        shrink = float((1 - sch.alphas_cumprod[800]).sqrt())
        assert 0.97 < shrink < 0.99
        assert torch.allclose(net.inputs[0], shrink * z, atol=1e-6)  # the model sees 0.98*z
        assert diff > 0.1


@pytest.mark.parametrize("t, shrink", [(800, 0.98), (399, 0.76)])
def test_trap_size(t, shrink):
    schedule = VPSchedule.scaled_linear()
    sigma = float(schedule.sigma(t))
    assert sigma / (1 + sigma**2) ** 0.5 == pytest.approx(shrink, abs=0.01)


def test_onestep_at_999_needs_no_rescale(unet, z, cond):
    """At sigma_max ComfyUI already scales by sqrt(1+sigma^2): no correction, same result as LCM."""
    ref, sch = lcm_onestep(VPNet(unet, residual=True), z, cond, 999)
    schedule = VPSchedule(sch.alphas_cumprod)
    sigmas = get_sigmas_onestep(999, schedule)
    out = sample_dmd_onestep(
        DiscreteVPDenoiser(VPNet(unet, residual=True), schedule),
        comfy_start(z, sigmas, schedule),
        sigmas,
        extra_args={"cond": cond},
    )
    assert float((out - ref).abs().max()) <= 1e-5


def test_onestep_schedules_and_callback():
    schedule = VPSchedule.scaled_linear()
    assert torch.equal(get_sigmas_onestep(), torch.tensor([schedule.sigmas[999], 0.0]).float())
    assert torch.equal(get_sigmas_onestep(800), torch.tensor([schedule.sigmas[800], 0.0]).float())
    with pytest.raises(ValueError, match=r"timestep must be in \[1, 999\]"):
        get_sigmas_onestep(1000)
    seen = []
    model = lambda x, sigma: x / (1 + sigma[:, None, None, None] ** 2)
    x = torch.randn(2, 3, 4, 4)
    sigmas = torch.tensor([2.0, 0.5])
    out = sample_dmd_onestep(model, x, sigmas, callback=seen.append)
    denoised = x / 5
    assert len(seen) == 1 and seen[0]["i"] == 0 and torch.equal(seen[0]["denoised"], denoised)
    # A longer schedule lands on its last sigma along the predicted trajectory.
    assert torch.allclose(out, denoised + 0.5 * (x - denoised) / 2.0)
    with pytest.raises(ValueError, match="at least 2 values"):
        sample_dmd_onestep(model, x, sigmas[:1])


def test_tscd_sigmas_take_a_loras_onestep_timestep_only_for_one_full_step():
    s = VPSchedule.scaled_linear()
    assert torch.equal(get_sigmas_tscd(1, s, onestep_timestep=800), get_sigmas_onestep(800, s))
    assert not torch.equal(get_sigmas_tscd(1, s), get_sigmas_onestep(800, s))
    for steps, denoise in ((2, 1.0), (4, 1.0), (1, 0.5)):  # more steps, or img2img: the TSCD schedule
        assert torch.equal(
            get_sigmas_tscd(steps, s, denoise=denoise, onestep_timestep=800), get_sigmas_tscd(steps, s, denoise=denoise)
        )
