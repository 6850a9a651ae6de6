"""Recommended settings for the official Hyper-SD file names."""

import pytest

from hypersd_core.presets import OFFICIAL_FILES, official_preset


def test_unified_one_step_lora_is_tcd_with_eta_1():
    p = official_preset("/models/loras/hyper-sdxl-1STEP-lora.safetensors")  # any folder, any case
    assert (p.base_model, p.spacing, p.eta, p.cfg, p.onestep_timestep, p.stage) == (
        "sdxl",
        "tcd",
        1.0,
        1.0,
        999,
        "unified",
    )
    assert p.steps == list(range(1, 9))


@pytest.mark.parametrize(
    "name, base, steps, cfg, strength",
    [
        ("Hyper-SD15-4steps-lora.safetensors", "sd15", [4], 1.0, 1.0),
        ("Hyper-SDXL-8steps-CFG-lora.safetensors", "sdxl", [8], 5.0, 1.0),
        ("Hyper-SD3-16steps-CFG-lora.safetensors", "sd3", [16], 7.0, 0.125),
        ("Hyper-FLUX.1-dev-8steps-lora.safetensors", "flux", [8], 3.5, 0.125),
    ],
)
def test_n_step_presets(name, base, steps, cfg, strength):
    p = official_preset(name)
    assert (p.base_model, p.steps, p.cfg, p.strength, p.onestep_timestep) == (base, steps, cfg, strength, None)
    assert p.prediction_type == ("flow" if base in ("sd3", "flux") else "epsilon")


def test_every_official_name_has_a_preset_and_unknown_names_none():
    assert all(official_preset(n) is not None for n in OFFICIAL_FILES)
    assert official_preset("my-lora.safetensors") is None
