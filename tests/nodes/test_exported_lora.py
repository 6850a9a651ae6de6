"""A LoRA from our trainer's export, for full-size SD1.5 and SDXL UNets (weights on the meta
device, only the LoRA materialised), loads with no unloaded key in ComfyUI core's LoraLoader and
in ours, with diffusers' or sd-scripts' key names; the sd-scripts names are ComfyUI's own."""

import logging

import pytest
import torch

from hypersd_models.specs import SD15, SDXL
from hypersd_core.lora_formats import HyperSDMetadata, sgm_unet_path

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def exported(request, loras_dir):
    """{key_names: file name} of one LoRA exported both ways, plus the number of UNet modules."""
    from train.config import ExportConfig, LoraConfig
    from train.export import export_lora
    from train.lora import add_lora, lora_named_parameters

    kind = request.param
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**(SD15 if kind == "sd15" else SDXL))
    add_lora(unet, 1, None, LoraConfig().target_modules)
    gen = torch.Generator().manual_seed(0)
    lora = lora_named_parameters(unet)
    for name in lora:  # materialise only the LoRA matrices: the base weights stay on meta
        owner, _, leaf = name.rpartition(".")
        module = unet.get_submodule(owner)
        setattr(module, leaf, torch.nn.Parameter(torch.randn(getattr(module, leaf).shape, generator=gen) * 0.01))
    meta = HyperSDMetadata(base_model=kind, steps=[1, 2, 4, 8], strength=0.8, spacing="tcd", eta=0.3, stage="tscd")
    names = {}
    for key_names in ("diffusers", "sd-scripts"):
        name = f"exported_{kind}_{key_names}"
        export_lora(unet, loras_dir, name, meta, ExportConfig(key_names=key_names), resolution=512)
        names[key_names] = name + ".safetensors"
    n_modules = sum(1 for n in lora if ".lora_A." in n)
    return kind, names, n_modules


def no_unloaded_keys(caplog):
    bad = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert not bad, bad[:3]


@pytest.mark.parametrize("key_names", ["diffusers", "sd-scripts"])
def test_core_loraloader_and_ours_load_every_key(comfyui, exported, key_names, sd15_meta, sdxl_meta, caplog):
    kind, names, n_modules = exported
    model, clip = sd15_meta if kind == "sd15" else sdxl_meta
    with caplog.at_level(logging.WARNING):
        core_model, _ = comfyui.run("LoraLoader", model, clip, names[key_names], 1.0, 1.0)
        ours_model, _, settings = comfyui.run(
            "HyperSDLoraLoader", model, clip, names[key_names], 1.0, 1.0, "recommended"
        )
    no_unloaded_keys(caplog)
    assert len(core_model.patches) == n_modules > 200  # one patched weight per exported module
    assert set(ours_model.patches) == set(core_model.patches)
    assert {p[0][0] for p in ours_model.patches.values()} == {0.8}  # our header's recommended strength
    assert "steps 1-8, spacing tcd, eta 0.3" in settings


def test_both_key_names_patch_the_same_weights_with_the_same_values(comfyui, exported, sd15_meta, sdxl_meta):
    kind, names, _ = exported
    model, clip = sd15_meta if kind == "sd15" else sdxl_meta
    a, _ = comfyui.run("LoraLoader", model, clip, names["diffusers"], 1.0, 1.0)
    b, _ = comfyui.run("LoraLoader", model, clip, names["sd-scripts"], 1.0, 1.0)
    assert set(a.patches) == set(b.patches)
    for key in list(a.patches)[:: max(1, len(a.patches) // 25)]:
        pa, pb = a.patches[key][0][1].weights, b.patches[key][0][1].weights
        for x, y in zip(pa, pb):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key


def test_sgm_names_are_comfyuis_own_for_every_sdxl_module(comfyui):
    """sgm_unet_path agrees with ComfyUI's diffusers -> LDM map on every resnet/attention weight."""
    import comfy.utils

    from hypersd_models.specs import COMFY_SDXL

    checked = 0
    for dk, lk in comfy.utils.unet_to_diffusers(dict(COMFY_SDXL)).items():
        module = dk[: -len(".weight")] if dk.endswith(".weight") else None
        if (
            module is None
            or not (".attentions." in module or ".resnets." in module)
            or "norm" in module.rsplit(".", 1)[-1]
        ):
            continue
        assert sgm_unet_path(module) == lk[: -len(".weight")], module
        checked += 1
    assert checked > 500
