"""eps / v / x0 parameterisations, the DDIM jump and DiscreteVPDenoiser (incl. v-prediction
parity with diffusers' TCDScheduler)."""

import pytest
import torch
from diffusers import TCDScheduler

from hypersd_core.parameterization import (
    DiscreteVPDenoiser,
    add_noise,
    cfg_combine,
    jump,
    renoise,
    to_x0_eps,
    training_target,
    vp_to_ve,
)
from hypersd_core.samplers import sample_tscd, seeded_noise_sampler
from hypersd_core.schedule import VPSchedule, unit_noise_to_ve, ve_input_scale

from .models import SD, VPNet, diffusers_noise_sampler, diffusers_tcd

SCHED = VPSchedule.scaled_linear()


def _sample(t):
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
    )
    alpha, sigma = SCHED.alpha_sigma(t, dtype=torch.float64)
    return x0, eps, alpha, sigma, add_noise(x0, eps, alpha, sigma)


@pytest.mark.parametrize("t", [torch.tensor([999, 500, 0]), torch.tensor(250)])
def test_to_x0_eps_round_trips(t):
    x0, eps, a, s, x_t = _sample(t)
    v = (a.reshape(-1, 1, 1, 1) if a.ndim else a) * eps - (s.reshape(-1, 1, 1, 1) if s.ndim else s) * x0
    for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        got_x0, got_eps = to_x0_eps(out, x_t, a, s, kind)
        assert torch.allclose(got_x0, x0, atol=1e-9), kind
        assert torch.allclose(got_eps, eps, atol=1e-9), kind
        assert torch.allclose(jump(got_x0, got_eps, a, s), x_t, atol=1e-12)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        to_x0_eps(eps, x_t, a, s, "flow")


def test_jump_to_clean_and_renoise():
    x0, eps, _, _, _ = _sample(0)
    assert torch.equal(jump(x0, eps, 1.0, 0.0), x0)
    ab_s, ab_t = SCHED.alpha_bar(200), SCHED.alpha_bar(600)
    x_s = add_noise(x0, eps, ab_s.sqrt(), (1 - ab_s).sqrt())
    z = torch.randn_like(x0)
    x_t = renoise(x_s, z, ab_s, ab_t)
    # renoise from s to t composes with the forward process: the x0 coefficient is sqrt(ab_t).
    lin = x_t - (ab_t / ab_s).sqrt() * (1 - ab_s).sqrt() * eps - (1 - ab_t / ab_s).sqrt() * z
    assert torch.allclose(lin, ab_t.sqrt() * x0, atol=1e-12)
    assert torch.equal(renoise(x_s, z, ab_s, ab_s), x_s)


def test_cfg_combine():
    c, u = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.equal(cfg_combine(c, u, 1.0), c)
    assert torch.equal(cfg_combine(c, u, 5.0), 5 * c)
    assert torch.equal(cfg_combine(c, u, torch.tensor([1.0, 3.0]))[1], torch.full((3,), 3.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_latents_get_exact_timesteps(dtype):
    """fp16/bf16 latents must not round t = 999 to 1000 (bf16) or sigma to another step."""
    seen = []
    net = lambda x, t: seen.append(t) or torch.zeros_like(x)
    ts = [999, 759, 259, 0]
    sigmas = SCHED.sigmas_for_timesteps(ts, final="t0")
    x = torch.ones(2, 4, 8, 8, dtype=dtype)
    out = sample_tscd(DiscreteVPDenoiser(net, SCHED), x, sigmas, eta=0.3, noise_sampler=seeded_noise_sampler(x, 0))
    assert out.dtype == dtype
    assert all(t.dtype == torch.float32 for t in seen)
    assert [t.tolist() for t in seen] == [[float(t)] * 2 for t in ts]


def test_denoiser_eps_zero_returns_input_and_quantize():
    seen = []
    net = lambda x, t: seen.append(t) or torch.zeros_like(x)
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(DiscreteVPDenoiser(net, SCHED)(x, torch.tensor(3.0)), x, atol=1e-6)
    DiscreteVPDenoiser(net, SCHED, quantize=True)(x, SCHED.sigma(torch.tensor(412.4)).float())
    assert seen[-1].item() == 412.0
    with pytest.raises(ValueError, match="prediction_type"):
        DiscreteVPDenoiser(net, SCHED, "flow")


@pytest.mark.parametrize(
    "prediction_type, steps, eta",
    [
        ("v_prediction", 2, 0.0),
        ("v_prediction", 4, 0.3),
        ("sample", 3, 1.0),
    ],
)
def test_tcd_parity_v_and_x0_models(unet, z, cond, prediction_type, steps, eta):
    """DiscreteVPDenoiser on a v- (or x0-) prediction network matches TCDScheduler configured
    with that prediction_type; compared as the final diffusers sample (schedule ends at t = 0)."""
    sch = TCDScheduler(**SD, prediction_type=prediction_type)
    sch.set_timesteps(steps)
    _, x0s, final = diffusers_tcd(VPNet(unet), sch, z, cond, eta, seed=9)
    schedule = VPSchedule(sch.alphas_cumprod)
    model = DiscreteVPDenoiser(VPNet(unet), schedule, prediction_type)
    sigmas = schedule.sigmas_for_timesteps(sch.timesteps.tolist(), final="t0")
    seen = []
    out = sample_tscd(
        model,
        z / sch.alphas_cumprod[999].sqrt(),
        sigmas,
        extra_args={"cond": cond},
        eta=eta,
        callback=seen.append,
        noise_sampler=diffusers_noise_sampler(z.shape, 9),
        schedule=schedule,
    )
    assert max(float((s["denoised"] - r).abs().max()) for s, r in zip(seen, x0s)) <= 1e-5
    assert float((out - final / sch.alphas_cumprod[0].sqrt()).abs().max()) <= 1e-5


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_to_x0_eps_inverts(kind):
    x0, eps, a, s, x_t = _sample(torch.tensor([999, 500, 0]))
    got_x0, got_eps = to_x0_eps(training_target(x0, eps, a, s, kind), x_t, a, s, kind)
    assert torch.allclose(got_x0, x0, atol=1e-9) and torch.allclose(got_eps, eps, atol=1e-9)


def test_training_target_rejects_unknown_kinds():
    x0, eps, a, s, _ = _sample(torch.tensor(10))
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        training_target(x0, eps, a, s, "flow")


def test_vp_to_ve_and_unit_noise_start_match_the_denoiser_input():
    t = torch.tensor([999, 400, 3])
    x0, eps, a, s, x_t = _sample(t)
    sigma = SCHED.sigma(t)
    x_ve = vp_to_ve(x_t, a)
    torch.testing.assert_close(x_ve * ve_input_scale(sigma).reshape(-1, 1, 1, 1), x_t)  # back to VP
    # the sampler start from unit noise z: its VP model input is z itself
    z = eps
    torch.testing.assert_close(
        unit_noise_to_ve(z, sigma.reshape(-1, 1, 1, 1)) * ve_input_scale(sigma).reshape(-1, 1, 1, 1), z
    )


def test_denoiser_keeps_comfyui_seed_from_a_plain_diffusers_unet(unet, cond, z):
    """extra_args may carry ComfyUI's ``seed`` (the samplers read it for their noise); the README's
    wrapper around a real UNet2DConditionModel (no ``**kw`` on its forward) must not receive it."""
    from hypersd_core import get_sigmas_tscd

    denoiser = DiscreteVPDenoiser(lambda x, t, **kw: unet(x, t, **kw).sample)
    sigmas = get_sigmas_tscd(2, spacing="tcd")
    x = unit_noise_to_ve(z, sigmas[0])
    out = sample_tscd(denoiser, x, sigmas, extra_args={"encoder_hidden_states": cond, "seed": 3}, eta=0.3)
    again = sample_tscd(denoiser, x, sigmas, extra_args={"encoder_hidden_states": cond, "seed": 3}, eta=0.3)
    other = sample_tscd(denoiser, x, sigmas, extra_args={"encoder_hidden_states": cond, "seed": 4}, eta=0.3)
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert torch.equal(out, again) and not torch.equal(out, other)  # the seed still drives the noise
