"""Every kohya key the trainer exports maps in ComfyUI's LoRA loader (comfy.lora.model_lora_keys_unet),
for full-size SD1.5 and SDXL UNets built on the meta device. Needs COMFYUI_PATH (a ComfyUI copy)."""

import os
import sys
from pathlib import Path

import pytest
import torch

from hypersd_models.specs import COMFY_SD15, COMFY_SDXL, SD15, SDXL
from train.config import LoraConfig
from train.export import kohya_state_dict
from train.lora import add_lora


@pytest.fixture(scope="module")
def comfy():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip(
            "COMFYUI_PATH is unset: point it to a copy of ComfyUI (cp -r ../shared/vendor/ComfyUI /tmp/c) "
            "to check the exported keys against ComfyUI's LoRA key map"
        )
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
    cls, unet_cfg = (
        (comfy.supported_models.SD15, COMFY_SD15) if kind == "sd15" else (comfy.supported_models.SDXL, COMFY_SDXL)
    )
    config = cls(dict(unet_cfg))
    with torch.device("meta"):
        model = config.get_model({}, device=torch.device("meta"))
    return comfy.lora.model_lora_keys_unet(model, {})


@pytest.mark.comfyui
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_every_exported_key_maps_in_comfyui(comfy, kind):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**(SD15 if kind == "sd15" else SDXL))
    add_lora(unet, 4, None, LoraConfig().target_modules)
    modules = {
        k.rsplit(".", 2)[0] if not k.endswith(".alpha") else k[: -len(".alpha")]
        for k in kohya_state_dict(unet, to_cpu=False)
    }
    key_map = _comfy_key_map(comfy, kind)
    unmapped = sorted(m for m in modules if m not in key_map)
    assert len(modules) > 100
    assert not unmapped, (
        f"{len(unmapped)} of {len(modules)} exported modules do not map in ComfyUI, e.g. {unmapped[:5]}"
    )
