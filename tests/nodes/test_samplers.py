"""The sampler and scheduler nodes inside ComfyUI's own sampling path (KSAMPLER, SamplerCustom),
on a recording toy denoiser and on a tiny random SD1.5-shaped UNet."""

import asyncio
import math
import types

import pytest
import torch

LATENT = (1, 4, 8, 8)


class RecordingWrap:
    """Stands in for ComfyUI's CFGGuider: records what the sampler feeds the model, predicts x0 = 0."""

    def __init__(self, model_sampling):
        self.inner_model = types.SimpleNamespace(model_sampling=model_sampling)
        self.inputs = []

    def __call__(self, x, sigma, model_options=None, seed=None):
        self.inputs.append((x.clone(), sigma.clone()))
        return torch.zeros_like(x)


def first_input(sampler, model_sampling, sigmas, noise, latent):
    wrap = RecordingWrap(model_sampling)
    sampler.sample(wrap, sigmas, {"model_options": {}, "seed": 3}, None, noise.clone(), latent, None, True)
    return wrap.inputs[0][0]


@pytest.fixture(scope="module")
def model_sampling(tiny_model):
    return tiny_model.get_model_object("model_sampling")


@pytest.mark.parametrize("sampler_id, extra", [("HyperSDDMDSampler", ()), ("HyperSDTSCDSampler", (0.3,))])
def test_start_noise_is_unit_variance_below_sigma_max_for_txt2img_only(
    comfyui, tiny_model, model_sampling, sampler_id, extra
):
    (sampler,) = comfyui.run(sampler_id, *extra)
    sig = model_sampling.sigmas
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(0))
    # txt2img below sigma_max (t=800): model input x/sqrt(1+s^2) must be the unit noise itself, as in diffusers
    s800 = torch.stack([sig[800], sig.new_zeros(())])
    x = first_input(sampler, model_sampling, s800, noise, torch.zeros(LATENT))
    torch.testing.assert_close(x / math.sqrt(1 + float(sig[800]) ** 2), noise, rtol=1e-5, atol=1e-6)
    # img2img: ComfyUI's latent + sigma*z is already diffusers' add_noise in VE space: left alone
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    x = first_input(sampler, model_sampling, s800, noise, latent)
    torch.testing.assert_close(x, latent + sig[800] * noise)
    # at sigma_max ComfyUI already scales by sqrt(1+s^2): no second correction
    s999 = torch.stack([sig[999], sig.new_zeros(())])
    x = first_input(sampler, model_sampling, s999, noise, torch.zeros(LATENT))
    torch.testing.assert_close(x, math.sqrt(1 + float(sig[999]) ** 2) * noise, rtol=1e-5, atol=1e-5)


def sample_custom(comfyui, model, sampler, sigmas, latent, seed=7, add_noise=True, cfg=1.0):
    gen = torch.Generator().manual_seed(11)
    positive = [[torch.randn(1, 77, 32, generator=gen), {}]]
    negative = [[torch.randn(1, 77, 32, generator=gen), {}]]
    result, denoised = comfyui.run(
        "SamplerCustom", model, add_noise, seed, cfg, positive, negative, sampler, sigmas, {"samples": latent}
    )
    return result["samples"]


def test_tscd_eta0_equals_comfy_euler_on_trailing_steps_txt2img_and_img2img(comfyui, tiny_model):
    """eta = 0 is DDIM; ComfyUI's euler with the 'simple' scheduler is DDIM on the same trailing steps."""
    (tscd,) = comfyui.run("HyperSDTSCDSampler", 0.0)
    (euler,) = comfyui.run("KSamplerSelect", "euler")
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(2))
    for denoise, start in ((1.0, torch.zeros(LATENT)), (0.5, latent)):
        (ours,) = comfyui.run("HyperSDScheduler", tiny_model, 4, "trailing", denoise)
        (ref,) = comfyui.run("BasicScheduler", tiny_model, "simple", 4, denoise)
        torch.testing.assert_close(ours, ref)
        a = sample_custom(comfyui, tiny_model, tscd, ours, start)
        b = sample_custom(comfyui, tiny_model, euler, ref, start)
        assert torch.isfinite(a).all() and a.abs().mean() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (a - latent).abs().mean() > 1e-3  # img2img changed the image


def test_tscd_noise_follows_the_seed(comfyui, tiny_model):
    (tscd,) = comfyui.run("HyperSDTSCDSampler", 0.5)
    (sigmas,) = comfyui.run("HyperSDScheduler", tiny_model, 4, "tcd", 1.0)
    empty = torch.zeros(LATENT)
    a = sample_custom(comfyui, tiny_model, tscd, sigmas, empty, seed=1, add_noise=False)
    b = sample_custom(comfyui, tiny_model, tscd, sigmas, empty, seed=1, add_noise=False)
    c = sample_custom(comfyui, tiny_model, tscd, sigmas, empty, seed=2, add_noise=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().mean() > 1e-4  # only the per-step noise differs: it comes from the seed


def test_onestep_at_800_matches_comfy_euler_fed_unit_variance_noise(comfyui, tiny_model):
    """Ours from an empty latent == ComfyUI's euler given diffusers' start x = sqrt(1+s^2)*z explicitly."""
    import comfy.sample

    (dmd,) = comfyui.run("HyperSDDMDSampler")
    (sigmas,) = comfyui.run("HyperSDOneStepScheduler", tiny_model, 800)
    sig = tiny_model.get_model_object("model_sampling").sigmas
    torch.testing.assert_close(sigmas, torch.stack([sig[800], sig.new_zeros(())]))
    ours = sample_custom(comfyui, tiny_model, dmd, sigmas, torch.zeros(LATENT), seed=5)
    z = comfy.sample.prepare_noise(torch.zeros(LATENT), 5)
    scale = tiny_model.model.latent_format.scale_factor
    start = math.sqrt(1 + float(sigmas[0]) ** 2) * z / scale  # process_latent_in multiplies by scale
    (euler,) = comfyui.run("KSamplerSelect", "euler")
    ref = sample_custom(comfyui, tiny_model, euler, sigmas, start, add_noise=False)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    plain = sample_custom(comfyui, tiny_model, euler, sigmas, torch.zeros(LATENT), seed=5)
    assert (plain - ours).abs().mean() > 1e-3 * ours.abs().mean()  # the trap is real on this model


def test_progress_bar_and_previews_get_every_step(comfyui, tiny_model):
    import comfy.utils

    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        (tscd,) = comfyui.run("HyperSDTSCDSampler", 0.3)
        (sigmas,) = comfyui.run("HyperSDScheduler", tiny_model, 3, "trailing", 1.0)
        sample_custom(comfyui, tiny_model, tscd, sigmas, torch.zeros(LATENT))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_scheduler_uses_the_model_table(comfyui, tiny_model):
    sig = tiny_model.get_model_object("model_sampling").sigmas
    (tcd,) = comfyui.run("HyperSDScheduler", tiny_model, 4, "tcd", 1.0)
    torch.testing.assert_close(tcd, torch.cat([sig[[999, 759, 499, 259]], sig.new_zeros(1)]))
    (img2img,) = comfyui.run("HyperSDScheduler", tiny_model, 2, "trailing", 0.5)
    torch.testing.assert_close(img2img, torch.cat([sig[[499, 249]], sig.new_zeros(1)]))
    with pytest.raises(ValueError, match="original_steps"):
        comfyui.run("HyperSDScheduler", tiny_model, 40, "tcd", 0.5)


def patched(comfyui, model, node_id, *args):
    return comfyui.run(node_id, model, *args)[0]


def test_v_prediction_and_x0_models_are_supported(comfyui, tiny_model):
    (tscd,) = comfyui.run("HyperSDTSCDSampler", 0.3)
    for kind in ("v_prediction", "x0"):
        model = patched(comfyui, tiny_model, "ModelSamplingDiscrete", kind, False)
        (sigmas,) = comfyui.run("HyperSDScheduler", model, 2, "trailing", 1.0)
        result = sample_custom(comfyui, model, tscd, sigmas, torch.zeros(LATENT))
        assert torch.isfinite(result).all()


def test_unsupported_models_get_clear_errors(comfyui, tiny_model):
    (tscd,) = comfyui.run("HyperSDTSCDSampler", 0.3)
    (dmd,) = comfyui.run("HyperSDDMDSampler")
    (sigmas,) = comfyui.run("HyperSDScheduler", tiny_model, 2, "trailing", 1.0)
    flow_hint = r"flow-matching model \(Model\w+: SD3/FLUX.1-style\).*KSampler \(sampler euler"
    sd3 = patched(comfyui, tiny_model, "ModelSamplingSD3", 3.0)
    flux = patched(comfyui, tiny_model, "ModelSamplingFlux", 1.15, 0.5, 1024, 1024)
    for flow in (sd3, flux):
        for sampler in (tscd, dmd):
            with pytest.raises(ValueError, match=flow_hint):
                sample_custom(comfyui, flow, sampler, sigmas, torch.zeros(LATENT))
        with pytest.raises(ValueError, match=flow_hint):
            comfyui.run("HyperSDScheduler", flow, 2, "trailing", 1.0)
        with pytest.raises(ValueError, match=flow_hint):
            comfyui.run("HyperSDOneStepScheduler", flow, 999)
    edm = patched(comfyui, tiny_model, "ModelSamplingContinuousEDM", "eps", 120.0, 0.002)
    with pytest.raises(ValueError, match="discrete-timestep.*ModelSamplingContinuousEDM"):
        comfyui.run("HyperSDOneStepScheduler", edm, 999)
    img2img = patched(comfyui, tiny_model, "ModelSamplingDiscrete", "img_to_img", False)
    with pytest.raises(ValueError, match="support eps, v and x0 prediction; this model uses IMG_TO_IMG"):
        comfyui.run("HyperSDScheduler", img2img, 2, "trailing", 1.0)
    lcm = patched(comfyui, tiny_model, "ModelSamplingDiscrete", "lcm", False)
    with pytest.raises(ValueError, match="distilled \\(LCM\\)"):
        comfyui.run("HyperSDScheduler", lcm, 2, "trailing", 1.0)


def test_out_of_range_values_are_refused(comfyui):
    import execution

    with pytest.raises(ValueError, match="eta must be between 0 and 1"):
        comfyui.run("HyperSDTSCDSampler", 1.5)
    prompt = {"1": {"class_type": "HyperSDTSCDSampler", "inputs": {"eta": 1.5}}}
    ok, errors, _ = asyncio.run(execution.validate_inputs("p", prompt, "1", {}))
    assert not ok and errors[0]["type"] == "value_bigger_than_max"
