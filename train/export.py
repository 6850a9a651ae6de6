"""Export the student LoRA: a kohya-format .safetensors with ``.alpha`` and our HyperSDMetadata
(what ComfyUI, A1111 and diffusers load), plus a diffusers/peft copy (``load_lora_weights``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from hypersd_core.lora_formats import HyperSDMetadata, save_lora, to_kohya

from .config import TrainConfig
from .lora import ADAPTER


def peft_state_dict(unet, to_cpu: bool = True) -> dict[str, torch.Tensor]:
    """The LoRA in diffusers' layout: ``unet.<module>.lora_A.weight`` / ``lora_B``."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {"unet." + k: (v.detach().float().cpu().contiguous() if to_cpu else v) for k, v in sd.items()}


def kohya_state_dict(unet, to_cpu: bool = True) -> dict[str, torch.Tensor]:
    """The LoRA as kohya keys (``lora_unet_<module_path>.lora_down.weight`` / ``.lora_up`` / ``.alpha``)."""
    return to_kohya(peft_state_dict(unet, to_cpu), default_alpha=lora_alpha(unet))


def lora_alpha(unet) -> float:
    cfg = unet.peft_config[ADAPTER]
    return float(cfg.lora_alpha)


def lora_metadata(cfg: TrainConfig, stage_metadata: dict, base_model: str, prediction_type: str,
                  last: bool = True) -> HyperSDMetadata:
    """The header of a LoRA exported after a stage (``stage_metadata``: that stage's ``metadata()``).
    export.steps describes the final LoRA; a stage's own LoRA serves its own step counts.
    ``base_model``: the model kind's name, unless export.base_model overrides it."""
    e = cfg.export
    steps = e.steps if (e.steps and last) else stage_metadata.get("steps")
    extra = {"solver_steps": cfg.solver_steps, "segments_schedule": [s.segments for s in cfg.stages],
             "stages": [s.name for s in cfg.stages], "lora_rank": cfg.lora.rank}
    return HyperSDMetadata(base_model=e.base_model or base_model, steps=list(steps or []),
                           segments=stage_metadata.get("segments"), prediction_type=prediction_type,
                           strength=e.strength, eta=e.eta, cfg=e.cfg, spacing=e.spacing,
                           onestep_timestep=stage_metadata.get("onestep_timestep"), stage=stage_metadata.get("stage"),
                           extra=extra)


def export_lora(unet, folder: str | os.PathLike, name: str, metadata: HyperSDMetadata) -> dict[str, str]:
    """Write <folder>/<name>.safetensors (kohya) and <folder>/<name>_diffusers/ (peft); returns paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_sd = peft_state_dict(unet)
    kohya = to_kohya(peft_sd, default_alpha=lora_alpha(unet))  # = kohya_state_dict(unet)
    kohya_path = save_lora(folder / f"{name}.safetensors", kohya, metadata)
    ddir = folder / f"{name}_diffusers"
    tmp = folder / f".tmp-{name}_diffusers"
    shutil.rmtree(tmp, ignore_errors=True)
    from diffusers.loaders import StableDiffusionLoraLoaderMixin  # not the pipeline: no image-processor imports

    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp, unet_lora_layers={k[len("unet."):]: v for k, v in peft_sd.items()},
        unet_lora_adapter_metadata=unet.peft_config[ADAPTER].to_dict(), safe_serialization=True)
    shutil.rmtree(ddir, ignore_errors=True)
    os.replace(tmp, ddir)  # the folder appears complete or not at all
    return {"kohya": str(kohya_path), "diffusers": str(ddir / "pytorch_lora_weights.safetensors")}
