"""Export the student LoRA: a kohya-format .safetensors with ``.alpha``, our HyperSDMetadata and
the kohya ``ss_*`` / ModelSpec keys other tools read (what ComfyUI, A1111/Forge, kohya's tools and
diffusers load), plus a diffusers/peft copy (``load_lora_weights``); fp16 by default."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from hypersd_core.lora_formats import HyperSDMetadata, cast_lora, save_lora, sgm_unet_path, to_kohya, tool_metadata

from .config import ExportConfig, TrainConfig
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


def onestep_timestep(cfg: TrainConfig, stage_metadata: dict, last: bool = True) -> int | None:
    """The timestep a LoRA's 1 step starts from (the one-step sampler): the stage's own (a DMD
    stage's), else export.onestep_timestep for the final LoRA; None: the TSCD sampler at t=999."""
    own = stage_metadata.get("onestep_timestep")
    return own if own is not None or not last else cfg.export.onestep_timestep


def lora_metadata(
    cfg: TrainConfig, stage_metadata: dict, base_model: str, prediction_type: str, last: bool = True
) -> HyperSDMetadata:
    """The header of a LoRA exported after a stage (``stage_metadata``: that stage's ``metadata()``).
    export.steps describes the final LoRA; a stage's own LoRA serves its own step counts.
    ``base_model``: the model kind's name, unless export.base_model overrides it."""
    e = cfg.export
    steps = e.steps if (e.steps and last) else stage_metadata.get("steps")
    extra = {
        "solver_steps": cfg.solver_steps,
        "segments_schedule": [s.segments for s in cfg.stages],
        "stages": [s.name for s in cfg.stages],
        "lora_rank": cfg.lora.rank,
    }
    return HyperSDMetadata(
        base_model=e.base_model or base_model,
        steps=list(steps or []),
        segments=stage_metadata.get("segments"),
        prediction_type=prediction_type,
        strength=e.strength,
        eta=e.eta,
        cfg=e.cfg,
        spacing=e.spacing,
        onestep_timestep=onestep_timestep(cfg, stage_metadata, last),
        stage=stage_metadata.get("stage"),
        extra=extra,
    )


def export_lora(
    unet,
    folder: str | os.PathLike,
    name: str,
    metadata: HyperSDMetadata,
    options: ExportConfig | None = None,
    resolution: int | None = None,
) -> dict[str, str]:
    """Write <folder>/<name>.safetensors (kohya) and <folder>/<name>_diffusers/ (peft); returns paths.

    ``options`` (the config's export section; defaults if None): dtype fp16 | bf16 | fp32;
    key_names "sd-scripts" writes an SDXL LoRA's UNet keys in Stability's naming
    (lora_unet_input_blocks_4_1_...), as sd-scripts does, "diffusers" keeps diffusers' module paths
    (lora_unet_down_blocks_1_attentions_0_...): both load everywhere; title for modelspec.title.
    ``resolution``: the training resolution, for modelspec.resolution."""
    options = options or ExportConfig()
    dtype, key_names = options.dtype, options.key_names
    if key_names not in ("diffusers", "sd-scripts"):
        raise ValueError(f"export.key_names={key_names!r}: use diffusers or sd-scripts")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_sd = peft_state_dict(unet)
    named = peft_sd
    if key_names == "sd-scripts" and metadata.base_model == "sdxl":
        lpb = int(unet.config.layers_per_block)
        named = {"unet." + _renamed(k[len("unet.") :], lpb): v for k, v in peft_sd.items()}
    kohya = cast_lora(to_kohya(named, default_alpha=lora_alpha(unet)), dtype)  # = kohya_state_dict(unet)
    rank = unet.peft_config[ADAPTER].r
    header = {
        **metadata.to_header(),
        **tool_metadata(metadata, rank, lora_alpha(unet), resolution, options.title or name, dtype),
    }
    kohya_path = save_lora(folder / f"{name}.safetensors", kohya, header)
    ddir = folder / f"{name}_diffusers"
    tmp = folder / f".tmp-{name}_diffusers"
    shutil.rmtree(tmp, ignore_errors=True)
    from diffusers.loaders import StableDiffusionLoraLoaderMixin  # not the pipeline: no image-processor imports

    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp,
        unet_lora_layers=cast_lora({k[len("unet.") :]: v for k, v in peft_sd.items()}, dtype),
        unet_lora_adapter_metadata=unet.peft_config[ADAPTER].to_dict(),
        safe_serialization=True,
    )
    shutil.rmtree(ddir, ignore_errors=True)
    os.replace(tmp, ddir)  # the folder appears complete or not at all
    return {"kohya": str(kohya_path), "diffusers": str(ddir / "pytorch_lora_weights.safetensors")}


def _renamed(peft_key: str, layers_per_block: int) -> str:
    """``<module>.lora_A.weight`` with the module path in sgm naming."""
    module, _, suffix = peft_key.partition(".lora_")
    return f"{sgm_unet_path(module, layers_per_block)}.lora_{suffix}"
