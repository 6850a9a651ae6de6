"""The Hyper-SD LoRA loader in a real ComfyUI: every layout maps every key, and the LoRA acts.

The peft-layout file holds the same weights as Hyper-SD15-1step-lora.safetensors (kohya keys),
so the two must give the same image; strength 0 must give a different one.
"""

import pytest
import torch

from prompts import IMAGE_SIZE, read_latent, saved_files, txt2img
from sd15_models import CHECKPOINT, LORA_FILES

pytestmark = pytest.mark.comfyui

KOHYA = "Hyper-SD15-1step-lora.safetensors"
PEFT = "hypersd15-peft-layout-test-lora.safetensors"


def _settings_prompt(lora_name: str, strength_model: float = -1.0, strength_mode: str | None = None) -> dict:
    """Only the loader (its key mapping runs at execute) feeding a text preview: no sampling.
    strength_mode None: a prompt saved before that input existed (-1 = recommended)."""
    inputs = {
        "model": ["ckpt", 0],
        "clip": ["ckpt", 1],
        "lora_name": lora_name,
        "strength_model": strength_model,
        "strength_clip": 1.0,
    }
    if strength_mode is not None:
        inputs["strength_mode"] = strength_mode
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "lora": {"class_type": "HyperSDLoraLoader", "inputs": inputs},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["lora", 2]}},
    }


@pytest.mark.parametrize("lora_name", sorted(LORA_FILES))
def test_every_key_maps(comfy, lora_name):
    before = len(comfy.log_text())
    outputs = comfy.run(_settings_prompt(lora_name))
    new_log = comfy.log_text()[before:]
    assert "lora key not loaded" not in new_log, new_log
    text = " ".join(str(t) for t in outputs["show"]["text"])
    assert lora_name in text, text


def test_strength_mode_through_the_server(comfy):
    """The server passes strength_mode when given, and old prompts without it keep -1 = recommended."""
    name = sorted(LORA_FILES)[0]

    def settings(*args):
        return " ".join(str(t) for t in comfy.run(_settings_prompt(name, *args))["show"]["text"])

    recommended = settings(0.4, "recommended")
    assert settings(-1.0) == recommended and "strength 0.4" not in recommended
    assert "strength 0.4" in settings(0.4, "custom") and "strength 0.4" in settings(0.4)


@pytest.fixture(scope="module")
def one_step_latents(comfy):
    def run(lora, strength, tag):
        prompt = txt2img(
            CHECKPOINT, lora, strength, steps=1, spacing="tcd", eta=1.0, seed=7, size=IMAGE_SIZE, prefix=f"lora_{tag}"
        )
        return read_latent(saved_files(comfy, comfy.run(prompt), "latents")[0])

    return {
        tag: run(lora, s, tag) for tag, lora, s in (("kohya", KOHYA, 1.0), ("peft", PEFT, 1.0), ("off", KOHYA, 0.0))
    }


def test_lora_changes_the_image_and_layouts_agree(comfy, one_step_latents):
    kohya, peft, off = one_step_latents["kohya"], one_step_latents["peft"], one_step_latents["off"]
    assert kohya.shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert torch.isfinite(kohya).all() and torch.isfinite(off).all()
    change = (kohya - off).abs().max().item()
    layout_diff = (kohya - peft).abs().max().item()
    scale = off.abs().max().item()
    assert change > 1e-3 * scale, f"the LoRA at strength 1 barely changed the result ({change:.3g})"
    assert layout_diff <= 1e-5 * scale, f"peft and kohya layouts of the same LoRA differ by {layout_diff:.3g}"
    assert "lora key not loaded" not in comfy.log_text()
