"""VP schedule, sigma <-> timestep, and the two timestep selections against diffusers/ComfyUI."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, TCDScheduler

from hypersd_core.schedule import (
    VPSchedule,
    comfyui_start_correction,
    tcd_timesteps,
    trailing_timesteps,
    ve_input_scale,
)

from .comfy_source import comfy_function

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
COMFY = Path(os.environ.get("COMFYUI_PATH", Path(__file__).resolve().parents[3] / "shared" / "vendor" / "ComfyUI"))


@pytest.fixture(scope="module")
def sched():
    return VPSchedule.scaled_linear()


@pytest.mark.parametrize("cls", [DDPMScheduler, TCDScheduler])
def test_alphas_cumprod_match_diffusers_to_fp32_precision(sched, cls):
    ref = cls(**SD).alphas_cumprod  # float32 cumprod of float32 betas
    assert sched.alphas_cumprod.dtype == torch.float64
    diff = (sched.alphas_cumprod - ref.double()).abs()
    # diffusers accumulates 1000 float32 products: ~8 ulp relative at worst.
    assert diff.max() < 1e-6
    assert (diff / ref.double()).max() < 2e-6


def _comfy_make_beta_schedule():
    """ComfyUI's own make_beta_schedule, taken from its source file (ComfyUI is not imported)."""
    path = COMFY / "comfy" / "ldm" / "modules" / "diffusionmodules" / "util.py"
    if not path.is_file():
        pytest.skip(f"ComfyUI source not found at {COMFY} (set COMFYUI_PATH)")
    return comfy_function(path, "make_beta_schedule", {"torch": torch, "np": np})


def test_table_equals_comfyui_model_sampling_discrete(sched):
    betas = _comfy_make_beta_schedule()("linear", 1000, linear_start=0.00085, linear_end=0.012)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # as ModelSamplingDiscrete._register_schedule
    comfy_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
    assert torch.equal(sched.alphas_cumprod, alphas_cumprod)
    assert torch.equal(sched.sigmas.float(), comfy_sigmas)
    assert torch.equal(VPSchedule.from_sigmas(comfy_sigmas).sigmas.float(), comfy_sigmas)


def test_known_values(sched):
    assert sched.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert sched.sigma_min == pytest.approx(0.029168, abs=1e-6)
    assert float(sched.alpha_bar(-1)) == 1.0
    alpha, sigma = sched.alpha_sigma(torch.arange(1000))
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(1000))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_on_grid_sigmas_map_to_exact_integer_timesteps(sched, dtype):
    t = sched.timestep(sched.sigmas.to(dtype))
    assert t.dtype == dtype
    assert torch.equal(t.double(), torch.arange(1000, dtype=torch.float64))
    assert torch.equal(sched.sigma(torch.arange(1000)), sched.sigmas)  # integer t: exact table entry


def test_sigma_timestep_round_trip(sched):
    t = torch.linspace(0, 999, 1234, dtype=torch.float64)
    assert torch.allclose(sched.timestep(sched.sigma(t)), t, atol=1e-9, rtol=0)
    s = torch.tensor([0.0, 1e-4, 100.0], dtype=torch.float64)
    assert sched.timestep(s).tolist() == [-1.0, 0.0, 999.0]  # 0 = clean; out of range clamps
    assert float(sched.sigma(-1)) == 0.0 and float(sched.sigma(5000)) == sched.sigma_max


def test_sigmas_for_timesteps(sched):
    zero = sched.sigmas_for_timesteps([999, 499], final="zero")
    t0 = sched.sigmas_for_timesteps([999, 499], final="t0")
    assert zero.dtype == torch.float32 and zero[-1] == 0
    assert torch.equal(t0[:-1], zero[:-1]) and t0[-1] == sched.sigmas[0].float()
    with pytest.raises(ValueError, match="final must be"):
        sched.sigmas_for_timesteps([999], final="end")
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        sched.sigmas_for_timesteps([1000])


def test_documented_anchors():
    assert trailing_timesteps(4) == [999, 749, 499, 249]
    assert trailing_timesteps(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    assert tcd_timesteps(2) == [999, 499]
    assert tcd_timesteps(4) == [999, 759, 499, 259]
    assert tcd_timesteps(8) == [999, 879, 759, 639, 499, 379, 259, 139]


@pytest.mark.parametrize("steps", range(1, 9))
def test_trailing_equals_ddim_trailing(steps):
    ddim = DDIMScheduler(**SD, timestep_spacing="trailing")
    ddim.set_timesteps(steps)
    assert trailing_timesteps(steps) == ddim.timesteps.tolist()


@pytest.mark.parametrize("strength", [1.0, 0.6, 0.3])
@pytest.mark.parametrize("steps", range(1, 9))
def test_tcd_equals_tcd_scheduler(steps, strength):
    tcd = TCDScheduler(**SD)
    tcd.set_timesteps(steps, strength=strength)
    assert tcd_timesteps(steps, strength=strength) == tcd.timesteps.tolist()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: trailing_timesteps(0), "steps must be an integer in"),
        (lambda: trailing_timesteps(2.5), "steps must be an integer in"),
        (lambda: trailing_timesteps(1001), "steps must be an integer in"),
        (lambda: tcd_timesteps(4, strength=0.0), r"strength must be in \(0, 1\]"),
        (lambda: tcd_timesteps(4, strength=1.5), r"strength must be in \(0, 1\]"),
        (lambda: tcd_timesteps(4, original_steps=0), "original_steps must be in"),
        (lambda: tcd_timesteps(8, strength=0.1), "raise original_steps or strength"),
        (lambda: VPSchedule(torch.ones(2, 3) * 0.5), "1-D table"),
        (lambda: VPSchedule([0.5, 0.9]), "non-increasing"),
        (lambda: VPSchedule([1.5, 0.9]), r"\(0, 1\]"),
        (lambda: comfyui_start_correction(0.0), "sigma > 0"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_noise_scales(sched):
    s = torch.tensor([0.5, 14.6])
    assert torch.allclose(ve_input_scale(s), 1 / (1 + s**2).sqrt())
    # sigma*z times the start scale is sqrt(1+sigma^2)*z, whose VP model input is z itself.
    sig = float(sched.sigma(800))
    assert sig * comfyui_start_correction(sig) * float(ve_input_scale(torch.tensor(sig))) == pytest.approx(1.0)


def test_float32_schedule_math_for_devices_without_float64(monkeypatch):
    """Apple's MPS has no float64: there the schedule works in float32 and must agree closely."""
    from hypersd_core import schedule as sched
    from hypersd_core.samplers import get_sigmas_tscd, tscd_jump_sigmas

    assert sched.precise_dtype("mps") == torch.float32 and sched.precise_dtype("cpu") == torch.float64
    ref = VPSchedule.scaled_linear()
    sigmas = get_sigmas_tscd(8, ref, spacing="tcd")
    want_t, want_s = ref.timestep(sigmas[:-1]), tscd_jump_sigmas(sigmas, 0.3, ref)
    monkeypatch.setattr(sched, "precise_dtype", lambda device: torch.float32)
    f32 = VPSchedule.scaled_linear()
    assert torch.equal(f32.timestep(sigmas[:-1]), want_t)  # on-grid sigmas still map to exact integers
    got_s = tscd_jump_sigmas(sigmas, 0.3, f32)
    assert got_s.dtype == torch.float32
    assert torch.allclose(got_s, want_s, rtol=1e-6, atol=0)
