"""Every SD1.5 workflow in workflows/ runs to completion through a real ComfyUI server.

Each UI-format file is converted to an API prompt with the server's own node schemas, then only
three things change: the latent size (IMAGE_SIZE, for CPU speed), LoadImage's file (a generated
input image) and the save prefix. A SaveLatent is attached to what the VAE decodes, so the test
also sees the sampler's raw output. SDXL workflows are not run: a full-size SDXL UNet is too big
for a 2-core CI CPU (their schemas and links are checked by tests/nodes).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prompts import IMAGE_SIZE, INPUT_IMAGE, read_latent, saved_files
from sd15_models import CHECKPOINT
from workflow_api import ui_to_api

pytestmark = pytest.mark.comfyui

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))


def base_model(workflow: dict) -> str:
    """'sd15' or 'sdxl' from the checkpoint and LoRA file names the workflow loads."""
    names = " ".join(
        str(v)
        for n in workflow["nodes"]
        for v in (n.get("widgets_values") or [])
        if n["type"] in ("CheckpointLoaderSimple", "HyperSDLoraLoader", "LoraLoader", "UNETLoader")
    )
    if "xl" in names.lower():
        return "sdxl"
    if CHECKPOINT in names or "SD15" in names:
        return "sd15"
    return "unknown"


SD15 = [p for p in WORKFLOWS if base_model(json.loads(p.read_text())) == "sd15"]


def test_every_workflow_is_classified():
    kinds = {p.name: base_model(json.loads(p.read_text())) for p in WORKFLOWS}
    assert SD15, "no SD1.5 workflow found in workflows/"
    assert "unknown" not in kinds.values(), f"workflows of unknown base model (neither run nor skipped): {kinds}"


def adapt(prompt: dict, tag: str) -> dict:
    """Shrink, point at the test inputs, and also save the latent the VAE decodes."""
    for node_id, node in list(prompt.items()):
        inputs, typ = node["inputs"], node["class_type"]
        if typ == "EmptyLatentImage":
            inputs.update(width=IMAGE_SIZE, height=IMAGE_SIZE)
        elif typ == "LoadImage":
            inputs["image"] = INPUT_IMAGE
        elif typ == "SaveImage":
            inputs["filename_prefix"] = f"workflows/{tag}"
        elif typ == "VAEDecode":
            prompt[f"{node_id}_latent"] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": inputs["samples"], "filename_prefix": f"workflows/{tag}_{node_id}"},
            }
    return prompt


@pytest.mark.parametrize("path", SD15, ids=[p.stem for p in SD15])
def test_sd15_workflow_runs(comfy, path):
    prompt = adapt(ui_to_api(json.loads(path.read_text()), comfy.object_info), path.stem)
    outputs = comfy.run(prompt)

    images = saved_files(comfy, outputs, "images")
    assert images, f"{path.name} saved no image; outputs: {outputs}"
    from PIL import Image

    for image_path in images:
        with Image.open(image_path) as img:
            assert img.size == (IMAGE_SIZE, IMAGE_SIZE), (image_path.name, img.size)
            pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32))
        assert pixels.std() > 1.0, f"{image_path.name} is a flat image (NaN latents decode to black)"
    latents = saved_files(comfy, outputs, "latents")
    assert latents
    for latent_path in latents:
        lat = read_latent(latent_path)
        assert lat.shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
        assert torch.isfinite(lat).all(), f"{path.name}: non-finite values in the sampled latent"
    log = comfy.log_text()
    assert "lora key not loaded" not in log
    if any(node["class_type"] == "ControlNetLoader" for node in prompt.values()):
        assert "Requested to load ControlNet" in log, "the ControlNet was never loaded for sampling"
