"""Our samplers run unchanged under k-diffusion's DiscreteEpsDDPMDenoiser and agree with
DiscreteVPDenoiser."""

import pytest
import torch

from hypersd_core.parameterization import DiscreteVPDenoiser
from hypersd_core.samplers import (
    get_sigmas_onestep,
    get_sigmas_tscd,
    sample_dmd_onestep,
    sample_tscd,
    seeded_noise_sampler,
)
from hypersd_core.schedule import VPSchedule

from .models import VPNet

external = pytest.importorskip(
    "k_diffusion.external", reason="k-diffusion (with setuptools<81 for pkg_resources) is a test dependency"
)


def kdiff_model(net, schedule, quantize):
    """DiscreteEpsDDPMDenoiser over our alphas_cumprod; get_eps(x, t, **extra_args) -> net(x, t, cond)."""

    class Eps(external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, cond):
            return net(x, t, cond)

    return Eps(None, schedule.alphas_cumprod.float(), quantize=quantize)


@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("spacing, steps, eta", [("trailing", 4, 0.0), ("tcd", 4, 0.3), ("tcd", 8, 1.0)])
def test_tscd_under_k_diffusion_wrapper(unet, z, cond, quantize, spacing, steps, eta):
    schedule = VPSchedule.scaled_linear()
    sigmas = get_sigmas_tscd(steps, schedule, spacing=spacing)
    x = z * (1 + sigmas[0] ** 2).sqrt()
    # k-diffusion passes extra_args to the network, so the per-step noise comes in through a
    # noise_sampler (ComfyUI's "seed" extra arg is its own convention); same seed in both runs.
    extra = {"cond": cond}
    kd_net, our_net = VPNet(unet, residual=True), VPNet(unet, residual=True)
    kd = sample_tscd(
        kdiff_model(kd_net, schedule, quantize),
        x,
        sigmas,
        extra_args=extra,
        eta=eta,
        noise_sampler=seeded_noise_sampler(x, 7),
    )
    ours = sample_tscd(
        DiscreteVPDenoiser(our_net, schedule),
        x,
        sigmas,
        extra_args=extra,
        eta=eta,
        noise_sampler=seeded_noise_sampler(x, 7),
    )
    # k-diffusion interpolates t in float32 (or quantizes it); ours maps on-grid sigmas to exact
    # integers: both give the network the schedule's timesteps up to float32 rounding.
    for a, b in zip(kd_net.timesteps, our_net.timesteps):
        assert torch.allclose(a.double(), b.double(), atol=1e-3, rtol=0)
    assert float((kd - ours).abs().max()) <= 1e-5  # measured <= 3e-7


def test_dmd_onestep_under_k_diffusion_wrapper(unet, z, cond):
    schedule = VPSchedule.scaled_linear()
    sigmas = get_sigmas_onestep(800, schedule)
    x = z * sigmas[0]
    outs = [
        sample_dmd_onestep(m, x, sigmas, extra_args={"cond": cond}, rescale_start=True)
        for m in (kdiff_model(VPNet(unet, True), schedule, True), DiscreteVPDenoiser(VPNet(unet, True), schedule))
    ]
    assert float((outs[0] - outs[1]).abs().max()) <= 1e-5
