"""Every kohya key the trainer exports maps in ComfyUI's LoRA loader (comfy.lora.model_lora_keys_unet),
for full-size SD1.5 and SDXL UNets built on the meta device. Needs COMFYUI_PATH (a ComfyUI copy)."""

import os
import sys
from pathlib import Path

import pytest
import torch

from train.config import LoraConfig
from train.export import kohya_state_dict
from train.lora import add_lora

SDXL_DIFFUSERS = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


@pytest.fixture(scope="module")
def comfy():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH is unset: point it to a copy of ComfyUI (cp -r ../shared/vendor/ComfyUI /tmp/c) "
                    "to check the exported keys against ComfyUI's LoRA key map")
    root = Path(path).resolve()
    if not (root / "comfy" / "lora.py").is_file():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI tree")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.supported_models

    return comfy


def _comfy_key_map(comfy, kind):
    # Configs as ComfyUI's model detection produces them for SD1.5 / SDXL checkpoints.
    import importlib.util

    spec = importlib.util.spec_from_file_location("_nodes_conftest", Path(__file__).resolve().parents[1] / "nodes" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    SD15_UNET, SDXL_UNET = mod.SD15_UNET, mod.SDXL_UNET
    cls, unet_cfg = (comfy.supported_models.SD15, SD15_UNET) if kind == "sd15" else (comfy.supported_models.SDXL, SDXL_UNET)
    config = cls(dict(unet_cfg))
    with torch.device("meta"):
        model = config.get_model({}, device=torch.device("meta"))
    return comfy.lora.model_lora_keys_unet(model, {})


@pytest.mark.comfyui
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_every_exported_key_maps_in_comfyui(comfy, kind):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**(dict(cross_attention_dim=768) if kind == "sd15" else SDXL_DIFFUSERS))
    add_lora(unet, 4, None, LoraConfig().target_modules)
    modules = {k.rsplit(".", 2)[0] if not k.endswith(".alpha") else k[: -len(".alpha")] for k in kohya_state_dict(unet, to_cpu=False)}
    key_map = _comfy_key_map(comfy, kind)
    unmapped = sorted(m for m in modules if m not in key_map)
    assert len(modules) > 100
    assert not unmapped, f"{len(unmapped)} of {len(modules)} exported modules do not map in ComfyUI, e.g. {unmapped[:5]}"
