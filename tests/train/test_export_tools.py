"""The exported LoRA as other tools read it: kohya ss_* and ModelSpec metadata next to hypersd.*,
the export dtype (fp16 default, bf16, fp32), sd-scripts' SDXL key names, and diffusers'
load_lora_weights loading every module with the trained effect. (ComfyUI's core LoraLoader and
ours: tests/nodes/test_exported_lora.py.)"""

from __future__ import annotations

import re

import pytest
import torch

from hypersd_models.specs import SDXL_TINY
from hypersd_core.lora_formats import HyperSDMetadata, load_lora, sgm_unet_path

diffusers = pytest.importorskip("diffusers")
RANK, ALPHA = 4, 2.0


def tiny_sdxl_with_lora(seed: int = 0):
    from train.config import LoraConfig
    from train.lora import add_lora, lora_named_parameters

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**SDXL_TINY)
    add_lora(unet, RANK, ALPHA, LoraConfig().target_modules)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in lora_named_parameters(unet).items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return unet


def export(unet, folder, name, **options):
    from train.config import ExportConfig
    from train.export import export_lora

    meta = HyperSDMetadata(base_model="sdxl", steps=[1, 2, 4, 8], strength=0.8, eta=0.3, spacing="tcd", stage="tscd")
    return export_lora(unet, folder, name, meta, ExportConfig(**options), resolution=1024)


def load_like_a_pipeline(path, adapter="hyper"):
    """diffusers' SDXL load_lora_weights (its kohya conversion and peft injection), on a bare UNet."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    class UNetOnly(StableDiffusionXLLoraLoaderMixin):  # what a pipeline offers the mixin, UNet only
        text_encoder = text_encoder_2 = None
        hf_device_map = None

        def __init__(self, unet):
            self.unet = unet
            self.components = {"unet": unet}

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SDXL_TINY)
    UNetOnly(unet).load_lora_weights(str(path), adapter_name=adapter)
    return unet


def unet_out(unet):
    gen = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([999, 300])
    c = torch.randn(2, 77, SDXL_TINY["cross_attention_dim"], generator=gen)
    added = {"text_embeds": torch.randn(2, 32, generator=gen), "time_ids": torch.randn(2, 6, generator=gen)}
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=c, added_cond_kwargs=added).sample


def test_metadata_parses_as_kohya_tools_and_modelspec_expect(tmp_path):
    paths = export(tiny_sdxl_with_lora(), tmp_path, "meta_check", title="Hyper-SD tiny")
    sd, header = load_lora(paths["kohya"])
    assert all(isinstance(v, str) for v in header.values())  # safetensors metadata is str -> str
    assert header["ss_network_module"] == "networks.lora"
    assert int(header["ss_network_dim"]) == RANK and float(header["ss_network_alpha"]) == ALPHA
    assert header["ss_base_model_version"] == "sdxl_base_v1-0"
    assert header["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert header["modelspec.title"] == header["ss_output_name"] == "Hyper-SD tiny"
    assert re.fullmatch(r"\d+x\d+", header["modelspec.resolution"]) and header["modelspec.resolution"] == "1024x1024"
    assert header["modelspec.sai_model_spec"] and header["modelspec.implementation"].startswith("https://")
    meta = HyperSDMetadata.from_header(header)  # ours still there
    assert (meta.base_model, meta.strength, meta.spacing) == ("sdxl", 0.8, "tcd")
    # the dims the header states are the file's: kohya tools read them instead of the tensors
    downs = [v for k, v in sd.items() if k.endswith(".lora_down.weight")]
    assert downs and {d.shape[0] for d in downs} == {RANK}
    assert {float(v) for k, v in sd.items() if k.endswith(".alpha")} == {ALPHA}


@pytest.mark.parametrize(
    "dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_export_dtype(tmp_path, dtype, torch_dtype):
    unet = tiny_sdxl_with_lora()
    paths = export(unet, tmp_path, f"d_{dtype}", **({} if dtype == "fp16" else {"dtype": dtype}))  # fp16: the default
    for kind in ("kohya", "diffusers"):
        sd, header = load_lora(paths[kind])
        assert {v.dtype for v in sd.values()} == {torch_dtype}, kind
    assert header.get("modelspec.unet_dtype", dtype) == dtype


def test_bad_export_options_are_refused():
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="export.dtype must be fp16, bf16 or fp32"):
        load_config("embedded", overrides=["export.dtype=fp8"])
    with pytest.raises(ConfigError, match="export.key_names must be diffusers or sd-scripts"):
        load_config("embedded", overrides=["export.key_names=a1111"])


def test_sd_scripts_sdxl_names():
    """A few by hand; every module of the full-size SDXL UNet against ComfyUI's own map: tests/nodes."""
    assert (
        sgm_unet_path("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
        == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    )
    assert sgm_unet_path("down_blocks.0.resnets.1.conv1") == "input_blocks.2.0.in_layers.2"
    assert sgm_unet_path("mid_block.resnets.1.time_emb_proj") == "middle_block.2.emb_layers.1"
    assert sgm_unet_path("mid_block.attentions.0.proj_in") == "middle_block.1.proj_in"
    assert sgm_unet_path("up_blocks.2.resnets.2.conv_shortcut") == "output_blocks.8.0.skip_connection"
    assert sgm_unet_path("up_blocks.0.attentions.1.proj_out") == "output_blocks.1.1.proj_out"


@pytest.mark.parametrize("key_names", ["diffusers", "sd-scripts"])
def test_diffusers_load_lora_weights_loads_every_module_with_the_trained_effect(tmp_path, key_names):
    unet = tiny_sdxl_with_lora()
    paths = export(unet, tmp_path, f"k_{key_names}", key_names=key_names, dtype="fp32")
    sd, _ = load_lora(paths["kohya"])
    if key_names == "sd-scripts":
        assert not [k for k in sd if "down_blocks" in k or "up_blocks" in k or "mid_block" in k]
        assert any(k.startswith("lora_unet_input_blocks_") for k in sd)
    loaded = load_like_a_pipeline(paths["kohya"])
    n_loaded = sum(1 for n, _ in loaded.named_parameters() if "lora_A.hyper" in n)
    n_trained = sum(1 for n, _ in unet.named_parameters() if "lora_A.default" in n)
    assert n_loaded == n_trained > 50
    base = diffusers.UNet2DConditionModel(**SDXL_TINY)
    assert (unet_out(unet) - unet_out(base)).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(unet_out(loaded), unet_out(unet), rtol=1e-4, atol=1e-5)
