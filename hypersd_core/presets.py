"""Recommended settings for the official Hyper-SD files (from the model card), by file name.

Our own LoRAs carry these in their metadata; the official ones are recognised by name.
"""

from __future__ import annotations

import os

from .lora_formats import HyperSDMetadata

OFFICIAL_FILES = {
    # name: (base, steps, eta, cfg, strength, spacing)
    "Hyper-SD15-1step-lora.safetensors": ("sd15", list(range(1, 9)), 1.0, 1.0, 1.0, "tcd"),
    "Hyper-SD15-2steps-lora.safetensors": ("sd15", [2], 0.0, 1.0, 1.0, "trailing"),
    "Hyper-SD15-4steps-lora.safetensors": ("sd15", [4], 0.0, 1.0, 1.0, "trailing"),
    "Hyper-SD15-8steps-lora.safetensors": ("sd15", [8], 0.0, 1.0, 1.0, "trailing"),
    "Hyper-SD15-8steps-CFG-lora.safetensors": ("sd15", [8], 0.0, 5.0, 1.0, "trailing"),
    "Hyper-SD15-12steps-CFG-lora.safetensors": ("sd15", [12], 0.0, 5.0, 1.0, "trailing"),
    "Hyper-SDXL-1step-lora.safetensors": ("sdxl", list(range(1, 9)), 1.0, 1.0, 1.0, "tcd"),
    "Hyper-SDXL-2steps-lora.safetensors": ("sdxl", [2], 0.0, 1.0, 1.0, "trailing"),
    "Hyper-SDXL-4steps-lora.safetensors": ("sdxl", [4], 0.0, 1.0, 1.0, "trailing"),
    "Hyper-SDXL-8steps-lora.safetensors": ("sdxl", [8], 0.0, 1.0, 1.0, "trailing"),
    "Hyper-SDXL-8steps-CFG-lora.safetensors": ("sdxl", [8], 0.0, 5.0, 1.0, "trailing"),
    "Hyper-SDXL-12steps-CFG-lora.safetensors": ("sdxl", [12], 0.0, 5.0, 1.0, "trailing"),
    "Hyper-SD3-4steps-CFG-lora.safetensors": ("sd3", [4], 0.0, 3.0, 0.125, "flow"),
    "Hyper-SD3-8steps-CFG-lora.safetensors": ("sd3", [8], 0.0, 5.0, 0.125, "flow"),
    "Hyper-SD3-16steps-CFG-lora.safetensors": ("sd3", [16], 0.0, 7.0, 0.125, "flow"),
    "Hyper-FLUX.1-dev-8steps-lora.safetensors": ("flux", [8], 0.0, 3.5, 0.125, "flow"),
    "Hyper-FLUX.1-dev-16steps-lora.safetensors": ("flux", [16], 0.0, 3.5, 0.125, "flow"),
}


def lora_settings(filename: str, header=None) -> HyperSDMetadata | None:
    """A LoRA's Hyper-SD settings: its header's ``hypersd.*`` metadata, else the official file's
    preset by name, else None (what the ComfyUI loader and the demo both read)."""
    return HyperSDMetadata.from_header(header) or official_preset(filename)


def official_preset(filename: str) -> HyperSDMetadata | None:
    """Settings for an official Hyper-SD LoRA file name (case-insensitive), else None."""
    base = os.path.basename(filename).lower()
    for name, (model, steps, eta, cfg, strength, spacing) in OFFICIAL_FILES.items():
        if name.lower() == base:
            return HyperSDMetadata(
                base_model=model,
                steps=list(steps),
                prediction_type="flow" if spacing == "flow" else "epsilon",
                strength=strength,
                eta=eta,
                cfg=cfg,
                spacing=spacing,
                onestep_timestep=999 if steps[0] == 1 else None,
                stage="unified" if steps[0] == 1 else "tscd",
            )
    return None
