"""API-format prompts built in code for the LoRA and equality tests, and readers for what they save."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 64  # pixels: 8x8 latents, the cheapest size a full SD1.5 UNet (3 downsamplings) runs at
INPUT_IMAGE = "hypersd_test_input.png"
POSITIVE = "a photo of a red fox in the snow, detailed"
NEGATIVE = "blurry"


def txt2img(
    ckpt: str,
    lora: str | None,
    strength: float,
    steps: int,
    spacing: str,
    eta: float,
    seed: int,
    size: int,
    prefix: str,
    decode: bool = False,
) -> dict:
    """Checkpoint -> [Hyper-SD LoRA] -> SamplerCustom(TSCD sampler, Hyper-SD scheduler, cfg 1) -> SaveLatent."""
    model, clip = ["ckpt", 0], ["ckpt", 1]
    p = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if lora is not None:
        p["lora"] = {
            "class_type": "HyperSDLoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora,
                "strength_model": strength,
                "strength_clip": 1.0,
            },
        }
        model, clip = ["lora", 0], ["lora", 1]
    p.update(
        {
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": POSITIVE}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": NEGATIVE}},
            "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "sampler": {"class_type": "HyperSDTSCDSampler", "inputs": {"eta": eta}},
            "sigmas": {
                "class_type": "HyperSDScheduler",
                "inputs": {"model": model, "steps": steps, "spacing": spacing, "denoise": 1.0},
            },
            "sample": {
                "class_type": "SamplerCustom",
                "inputs": {
                    "model": model,
                    "add_noise": True,
                    "noise_seed": seed,
                    "cfg": 1.0,
                    "positive": ["pos", 0],
                    "negative": ["neg", 0],
                    "sampler": ["sampler", 0],
                    "sigmas": ["sigmas", 0],
                    "latent_image": ["latent", 0],
                },
            },
            "save_latent": {
                "class_type": "SaveLatent",
                "inputs": {"samples": ["sample", 0], "filename_prefix": f"latents/{prefix}"},
            },
        }
    )
    if decode:
        p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
        p["save_image"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return p


def read_latent(path: Path) -> torch.Tensor:
    """The tensor a SaveLatent node wrote (a safetensors file)."""
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"].float()


def saved_files(comfy, outputs: dict, key: str) -> list[Path]:
    """Every file an output kind ('images', 'latents') points to, across output nodes."""
    return [comfy.output_file(item) for node in outputs.values() for item in node.get(key, [])]
