"""The Hyper-SD LoRA loaders (model + CLIP, and model only): any supported layout -> ComfyUI's
own LoRA patching, at the strength the file recommends unless the user picks one."""

import logging
import os

from ..hypersd_core.lora_formats import (
    CROSS_ATTENTION_DIMS,
    FLOW_BASES,
    HyperSDMetadata,
    infer_base_model,
    kohya_pair_problem,
    load_lora,
    lora_modules,
    to_kohya,
)
from ..hypersd_core.presets import lora_settings
from .compat import io
from .model_schedule import ONESTEP_OPTION

STRENGTH_MODES = ("recommended", "custom")
LEGACY_RECOMMENDED = -1.0  # strength_model of workflows saved before strength_mode existed
BASE_NAMES = {"sd15": "SD1.5", "sd21": "SD2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX.1"}
EXAMPLE_FILES = {
    "sd15": "Hyper-SD15-1step-lora.safetensors",
    "sd21": "an SD2.x LoRA",
    "sdxl": "Hyper-SDXL-1step-lora.safetensors",
    "sd3": "Hyper-SD3-8steps-CFG-lora.safetensors",
    "flux": "Hyper-FLUX.1-dev-8steps-lora.safetensors",
}
# What to sample a flow-matching model with: ComfyUI's own samplers (ours are VP-only).
FLOW_SAMPLING = {
    "flux": "KSampler sampler euler, scheduler simple, cfg 1.0 with FluxGuidance {cfg:g}",
    "sd3": "KSampler sampler euler, scheduler sgm_uniform, cfg {cfg:g}",
}


def lora_inputs(with_clip: bool):
    import folder_paths

    inputs = [
        io.Model.Input(
            "model", tooltip="The model to patch (SD1.5, SDXL, SD3 or FLUX.1); must match the LoRA's base model."
        )
    ]
    if with_clip:
        inputs.append(
            io.Clip.Input(
                "clip",
                tooltip="The CLIP model; patched only if the LoRA has text-encoder keys "
                "(the official Hyper-SD LoRAs have none).",
            )
        )
    inputs += [
        io.Combo.Input(
            "lora_name",
            options=folder_paths.get_filename_list("loras"),
            tooltip="A .safetensors LoRA in models/loras, e.g. Hyper-SD15-1step-lora.safetensors or "
            "Hyper-FLUX.1-dev-8steps-lora.safetensors.",
        ),
        io.Float.Input(
            "strength_model",
            default=1.0,
            min=-10.0,
            max=10.0,
            step=0.01,
            tooltip="LoRA strength on the diffusion model when strength_mode is 'custom'; 0 disables it.",
        ),
    ]
    if with_clip:
        inputs.append(
            io.Float.Input(
                "strength_clip",
                default=1.0,
                min=-10.0,
                max=10.0,
                step=0.01,
                tooltip="Strength on the text encoder, for LoRAs that carry text-encoder keys.",
            )
        )
    # Optional and last: workflows saved before it existed keep their widget order (the pack's web
    # extension fills it in), and API prompts without it keep their old meaning (-1 = recommended).
    inputs.append(
        io.Combo.Input(
            "strength_mode",
            options=list(STRENGTH_MODES),
            default="recommended",
            optional=True,
            tooltip="recommended: the strength from the file's Hyper-SD metadata or the official "
            "file's model card (1.0 for SD1.5/SDXL, 0.125 for SD3/FLUX.1; 1.0 if unknown). "
            "custom: strength_model.",
        )
    )
    return inputs


def lora_outputs(with_clip: bool):
    outputs = [io.Model.Output(display_name="MODEL", tooltip="The patched diffusion model.")]
    if with_clip:
        outputs.append(io.Clip.Output(display_name="CLIP", tooltip="The (possibly patched) CLIP model."))
    outputs.append(io.String.Output(display_name="settings", tooltip="The LoRA's recommended sampler settings."))
    return outputs


DESCRIPTION = (
    "Loads a Hyper-SD LoRA (official ByteDance files for SD1.5, SDXL, SD3 and FLUX.1, or our trainer's; "
    "kohya, peft or diffusers keys) and applies its recommended strength. CFG convention: diffusers "
    "guidance_scale 0 (no guidance) is ComfyUI cfg 1.0; the few-step SD1.5/SDXL LoRAs want cfg 1.0, "
    "the CFG LoRAs 5-8."
)


class HyperSDLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDLoraLoader",
            display_name="Hyper-SD LoRA Loader",
            category="HyperSD/loaders",
            description=DESCRIPTION,
            inputs=lora_inputs(True),
            outputs=lora_outputs(True),
        )

    @classmethod
    def execute(cls, model, clip, lora_name, strength_model, strength_clip, strength_mode=None) -> io.NodeOutput:
        patched_model, patched_clip, settings = apply_lora(
            model, clip, lora_name, strength_mode, strength_model, strength_clip
        )
        return io.NodeOutput(patched_model, patched_clip, settings)


class HyperSDLoraLoaderModelOnly(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDLoraLoaderModelOnly",
            display_name="Hyper-SD LoRA Loader (Model Only)",
            category="HyperSD/loaders",
            description=DESCRIPTION + " Model only, like LoraLoaderModelOnly: text-encoder keys are skipped.",
            inputs=lora_inputs(False),
            outputs=lora_outputs(False),
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_mode=None) -> io.NodeOutput:
        patched_model, _, settings = apply_lora(model, None, lora_name, strength_mode, strength_model, 0.0)
        return io.NodeOutput(patched_model, settings)


def resolve_strength(strength_mode, strength_model: float, meta: HyperSDMetadata | None) -> float:
    """The strength to apply. ``strength_mode`` None is a prompt saved before it existed: there
    strength_model -1 meant 'recommended'."""
    if strength_mode is None:
        strength_mode = "recommended" if strength_model == LEGACY_RECOMMENDED else "custom"
    if strength_mode not in STRENGTH_MODES:
        raise ValueError(f"strength_mode {strength_mode!r}: use one of {', '.join(STRENGTH_MODES)}")
    if strength_mode == "custom":
        return float(strength_model)
    return meta.strength if meta is not None else 1.0


def apply_lora(model, clip, lora_name, strength_mode, strength_model, strength_clip):
    """(patched MODEL, patched CLIP or None, settings line); clip None = model only."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("loras", lora_name)
    state_dict, header = load_lora(path)
    meta = lora_settings(lora_name, header)
    base = model_base(model)
    # SD3/FLUX.1: ComfyUI maps their diffusers/kohya/BFL layouts itself; SD1.5/SDXL: kohya keys first.
    lora = dict(state_dict) if base in FLOW_BASES else to_kohya(state_dict, header)
    check_base_model(lora, meta, base, lora_name)
    unet_map, key_map = lora_key_maps(model, clip)
    if clip is None:
        lora = unet_only(lora, unet_map, lora_name)
    check_all_keys_map(lora, key_map, lora_name)
    if base not in FLOW_BASES:
        check_weights_fit(lora, model, clip, unet_map, key_map, lora_name)
    strength = resolve_strength(strength_mode, strength_model, meta)
    patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, lora, strength, strength_clip)
    if meta is not None and meta.onestep_timestep is not None:  # read by HyperSDScheduler at 1 step
        patched_model.model_options[ONESTEP_OPTION] = int(meta.onestep_timestep)
    return patched_model, patched_clip, describe(lora_name, meta, strength)


def model_base(model) -> str | None:
    """sd15 / sd21 / sdxl from the model's cross-attention width, sd3 / flux from its class, else None."""
    import comfy.model_base as mb

    inner = model.model
    if isinstance(inner, mb.Flux):
        return "flux"
    if isinstance(inner, mb.SD3):
        return "sd3"
    context_dim = inner.model_config.unet_config.get("context_dim")
    return CROSS_ATTENTION_DIMS.get(context_dim)


def check_base_model(lora, meta, base, lora_name) -> None:
    lora_base = infer_base_model(lora) or (meta.base_model if meta else None)
    if lora_base in BASE_NAMES and base is not None and lora_base != base:
        raise ValueError(
            f"{lora_name} is a {BASE_NAMES[lora_base]} LoRA but the model is {BASE_NAMES[base]}: load a "
            f"{BASE_NAMES[base]} Hyper-SD LoRA (e.g. {EXAMPLE_FILES[base]}) or a {BASE_NAMES[lora_base]} checkpoint."
        )


def lora_key_maps(model, clip) -> tuple[dict, dict]:
    """ComfyUI's LoRA-module -> weight maps: (diffusion model only, with the text encoders when clip)."""
    import comfy.lora

    unet_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is None:
        return unet_map, unet_map
    return unet_map, comfy.lora.model_lora_keys_clip(clip.cond_stage_model, dict(unet_map))


def unet_only(lora, unet_map, lora_name):
    """Drop the text-encoder part of a LoRA for a model-only load (logged, as LoraLoaderModelOnly users expect)."""
    modules = lora_modules(lora)
    text = {m for m in modules if m not in unet_map and m.startswith(("lora_te", "text_encoder"))}
    if not text:
        return lora
    logging.info("Hyper-SD: %s: skipped %d text-encoder module(s) (model-only loader)", lora_name, len(text))
    return {k: v for k, v in lora.items() if not any(k == m or k.startswith(m + ".") for m in text)}


def check_all_keys_map(lora, key_map, lora_name) -> None:
    """Refuse a LoRA with modules the model does not have (ComfyUI would skip them silently)."""
    unmapped = sorted(lora_modules(lora) - set(key_map))
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} module(s) of {lora_name} match nothing in this model (first: {', '.join(unmapped[:3])}); "
            "the LoRA was made for another architecture. Check that LoRA and checkpoint share a base model."
        )


def _weight_shape(modules, name: str) -> tuple | None:
    for m in modules:
        try:
            return tuple(m.get_parameter(name).shape)
        except AttributeError:
            continue
    return None


def check_weights_fit(lora, model, clip, unet_map, key_map, lora_name) -> None:
    """Refuse halves that disagree, shapes that do not fit the model, alpha 0, and a LoRA with no
    diffusion-model weights (ComfyUI would skip such patches with only a log line)."""
    modules = lora_modules(lora)
    if not modules & set(unet_map):
        if clip is None:
            raise ValueError(
                f"{lora_name} holds no diffusion-model weights (only text-encoder ones), so the model-only loader has "
                "nothing to apply: use Hyper-SD LoRA Loader (with CLIP) or ComfyUI's LoraLoader"
            )
        logging.warning("Hyper-SD: %s holds only text-encoder weights; the diffusion model is unchanged", lora_name)
    owners = [model.model] if clip is None else [model.model, clip.cond_stage_model]
    shapes = {}
    for mod in modules:
        target = key_map.get(mod)
        target = target[0] if isinstance(target, tuple) else target
        shape = _weight_shape(owners, target) if isinstance(target, str) else None
        if shape is not None:
            shapes[mod] = shape
    problem = kohya_pair_problem(lora, shapes)
    if problem:
        raise ValueError(
            f"{lora_name}: {problem}; the file is damaged or made for another model: re-download or re-export it"
        )


def describe(lora_name: str, meta: HyperSDMetadata | None, strength: float) -> str:
    """One readable line of recommended settings for the `settings` output."""
    name = os.path.basename(lora_name)
    if meta is None:
        return f"{name}: no Hyper-SD metadata; strength {strength:g}, cfg 1.0, Hyper-SD Scheduler 'trailing' with its step count"
    steps = f"{meta.steps[0]}-{meta.steps[-1]}" if len(meta.steps) > 1 else ",".join(map(str, meta.steps)) or "?"
    base = BASE_NAMES.get(meta.base_model, meta.base_model)
    if meta.base_model in FLOW_BASES:
        sampling = FLOW_SAMPLING[meta.base_model].format(cfg=meta.cfg)
        return f"{name}: {base}, steps {steps}, {sampling} (ComfyUI's samplers: flow matching), strength {strength:g}"
    eta = "" if meta.eta is None else f", eta {meta.eta:g}"
    onestep = (
        ""
        if meta.onestep_timestep is None
        else f"; 1 step: Hyper-SD One-Step Scheduler timestep {meta.onestep_timestep} + DMD sampler"
    )
    return (
        f"{name}: {base}, steps {steps}, spacing {meta.spacing}{eta}, "
        f"cfg {meta.cfg:g} (ComfyUI), strength {strength:g}{onestep}"
    )
