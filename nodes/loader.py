"""The Hyper-SD LoRA loader: any supported layout -> kohya keys -> ComfyUI's own LoRA patching."""

import os

from ..hypersd_core.lora_formats import CROSS_ATTENTION_DIMS, HyperSDMetadata, infer_base_model, load_lora, to_kohya
from ..hypersd_core.presets import official_preset
from .compat import io
from .model_schedule import ONESTEP_OPTION

RECOMMENDED = -1.0
BASE_NAMES = {"sd15": "SD1.5", "sd21": "SD2.x", "sdxl": "SDXL"}


class HyperSDLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="HyperSDLoraLoader",
            display_name="Hyper-SD LoRA Loader",
            category="HyperSD/loaders",
            description="Loads a Hyper-SD LoRA (official ByteDance files or our trainer's; kohya, peft or diffusers "
            "keys) and applies its recommended strength. CFG convention: diffusers guidance_scale 0 (no guidance) "
            "is ComfyUI cfg 1.0; the few-step LoRAs want cfg 1.0, the CFG LoRAs 5-8.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 or SDXL model to patch; must match the LoRA's base model."),
                io.Clip.Input("clip", tooltip="The CLIP model; patched only if the LoRA has text-encoder keys "
                              "(the official Hyper-SD LoRAs have none)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A .safetensors LoRA in models/loras, e.g. Hyper-SD15-1step-lora.safetensors."),
                io.Float.Input("strength_model", default=RECOMMENDED, min=-1.0, max=10.0, step=0.01,
                               tooltip="-1 = the recommended strength from the file's Hyper-SD metadata or the "
                               "official file's model card (1.0 if neither is known); 0 disables the LoRA."),
                io.Float.Input("strength_clip", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength on the text encoder, for LoRAs that carry text-encoder keys."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The patched diffusion model."),
                io.Clip.Output(display_name="CLIP", tooltip="The (possibly patched) CLIP model."),
                io.String.Output(display_name="settings", tooltip="The LoRA's recommended sampler settings."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, lora_name, strength_model, strength_clip) -> io.NodeOutput:
        import comfy.sd
        import folder_paths

        if strength_model < 0 and strength_model != RECOMMENDED:
            raise ValueError(f"strength_model {strength_model}: use -1 for the recommended strength or a value >= 0")
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        state_dict, header = load_lora(path)
        meta = HyperSDMetadata.from_header(header) or official_preset(lora_name)
        lora = to_kohya(state_dict, header)
        check_base_model(lora, meta, model, lora_name)
        check_all_keys_map(lora, model, clip, lora_name)
        strength = (meta.strength if meta else 1.0) if strength_model == RECOMMENDED else strength_model
        patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, lora, strength, strength_clip)
        if meta is not None and meta.onestep_timestep is not None:  # read by HyperSDScheduler at 1 step
            patched_model.model_options[ONESTEP_OPTION] = int(meta.onestep_timestep)
        return io.NodeOutput(patched_model, patched_clip, describe(lora_name, meta, strength))


def model_base(model) -> str | None:
    """sd15 / sd21 / sdxl from the model's cross-attention width, else None."""
    context_dim = model.model.model_config.unet_config.get("context_dim")
    return CROSS_ATTENTION_DIMS.get(context_dim)


def check_base_model(lora, meta, model, lora_name) -> None:
    if meta is not None and meta.base_model in ("sd3", "flux"):
        raise ValueError(
            f"{lora_name} is a Hyper-SD3/FLUX LoRA: load it with ComfyUI's LoraLoader at strength 0.125 and sample "
            "with ComfyUI's own samplers (cfg/guidance as in its model card); the Hyper-SD nodes serve SD1.5/SDXL."
        )
    lora_base = infer_base_model(lora) or (meta.base_model if meta else None)
    base = model_base(model)
    if lora_base in CROSS_ATTENTION_DIMS.values() and base is not None and lora_base != base:
        raise ValueError(
            f"{lora_name} is a {BASE_NAMES[lora_base]} LoRA but the model is {BASE_NAMES[base]}: load a "
            f"{BASE_NAMES[base]} Hyper-SD LoRA (e.g. Hyper-{'SDXL' if base == 'sdxl' else 'SD15'}-1step-lora.safetensors) "
            f"or a {BASE_NAMES[lora_base]} checkpoint."
        )


def check_all_keys_map(lora, model, clip, lora_name) -> None:
    """Refuse a LoRA with modules the model does not have (ComfyUI would skip them silently)."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    unmapped = sorted({k.split(".", 1)[0] for k in lora} - set(key_map))
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} module(s) of {lora_name} match nothing in this model (first: {', '.join(unmapped[:3])}); "
            "the LoRA was made for another architecture. Check that LoRA and checkpoint share a base model."
        )


def describe(lora_name: str, meta: HyperSDMetadata | None, strength: float) -> str:
    """One readable line of recommended settings for the `settings` output."""
    name = os.path.basename(lora_name)
    if meta is None:
        return f"{name}: no Hyper-SD metadata; strength {strength:g}, cfg 1.0, Hyper-SD Scheduler 'trailing' with its step count"
    steps = f"{meta.steps[0]}-{meta.steps[-1]}" if len(meta.steps) > 1 else ",".join(map(str, meta.steps)) or "?"
    eta = "" if meta.eta is None else f", eta {meta.eta:g}"
    onestep = ("" if meta.onestep_timestep is None
               else f"; 1 step: Hyper-SD One-Step Scheduler timestep {meta.onestep_timestep} + DMD sampler")
    return (f"{name}: {BASE_NAMES.get(meta.base_model, meta.base_model)}, steps {steps}, spacing {meta.spacing}{eta}, "
            f"cfg {meta.cfg:g} (ComfyUI), strength {strength:g}{onestep}")
