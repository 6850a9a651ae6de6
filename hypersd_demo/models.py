"""Build a :class:`hypersd_core.generate.Generator` from local files: SD1.5/SDXL (diffusers folder
or single .safetensors file), a TAESD/TAESDXL tiny VAE, the embedded digits model, or a tiny
random model with the same interface (tests, and before the embedded model exists).

Loading is ``hypersd_models``' (nothing is downloaded); a merged LoRA's header settings (its
one-step timestep) are read as the ComfyUI nodes read them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from hypersd_core.generate import Generator, PromptEncoder
from hypersd_core.lora_formats import load_lora
from hypersd_core.lora_merge import LoraMerge
from hypersd_core.presets import lora_settings
from hypersd_core.schedule import VPSchedule
from hypersd_models.embedded import load_tokenizer
from hypersd_models.loading import LatentDecoder, ModelLoadError, load_sd_pipeline, schedule_from_config
from hypersd_models.tuning import tune_modules

log = logging.getLogger(__name__)

KINDS = ("embedded", "tiny", "sd15", "sdxl")
DEFAULT_SIZE = {"embedded": 16, "tiny": 32, "sd15": 512, "sdxl": 1024}


@dataclass
class Components:
    """Loaded parts for :func:`build_generator`."""

    kind: str
    unet: torch.nn.Module
    prompt_encoder: PromptEncoder
    decoder: Optional[torch.nn.Module]
    latent_channels: int
    vae_scale_factor: int
    size: int
    prediction_type: str = "epsilon"
    description: str = ""
    schedule: Optional[VPSchedule] = None  # None: SD's scaled-linear schedule
    controlnet: Optional[torch.nn.Module] = None  # diffusers ControlNetModel: generate() takes a control image


def attach_controlnet(comp: Components, path=None) -> Components:
    """Load a ControlNet for ``comp``'s UNet (``path`` None: the embedded scribble ControlNet) into
    ``comp.controlnet``; ModelLoadError (one line) for a missing file or one made for another model."""
    from hypersd_models.controlnet import load_controlnet

    comp.controlnet = load_controlnet(path, comp.unet, next(comp.unet.parameters()).dtype)
    comp.description += f", ControlNet {'embedded scribble' if path is None else os.path.basename(str(path))}"
    return comp


def tiny_controlnet(comp: Components, seed: int = 0) -> Components:
    """A random ControlNet for the tiny test models (its conditioning embedding downsamples by the
    VAE factor, as SD's does by 8); zero-initialised outputs are replaced by random ones so the
    control visibly changes the image."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    n = comp.vae_scale_factor.bit_length() - 1  # stride-2 blocks: log2(scale)
    net = ControlNetModel.from_unet(
        comp.unet,
        conditioning_embedding_out_channels=tuple(16 * 2**i for i in range(n + 1)),
        conditioning_channels=comp.latent_channels if comp.vae_scale_factor == 1 else 3,
    )
    with torch.no_grad():
        for m in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(m.weight, std=0.05)
    comp.controlnet = net.eval().requires_grad_(False)
    comp.description += ", random test ControlNet"
    return comp


def tiny_components(tokenizer_path=None, seed: int = 0, pixel_space: bool = False) -> Components:
    """A tiny random SD1.5-shaped model (UNet, CLIP text encoder, AutoencoderTiny decoder).

    ``pixel_space=True`` mimics the embedded digits model instead: 1 channel, 16x16, no decoder.
    """
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
    )
    ch = 1 if pixel_space else 4
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=ch,
        out_channels=ch,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    decoder, scale = None, 1
    if not pixel_space:
        vae = AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=4,
        )
        decoder, scale = LatentDecoder(vae.eval().requires_grad_(False)), 2
    enc = PromptEncoder([load_tokenizer(tokenizer_path)], [text.eval().requires_grad_(False)], "sd15")
    return Components(
        "tiny",
        unet.eval().requires_grad_(False),
        enc,
        decoder,
        ch,
        scale,
        16 if pixel_space else 32,
        description="tiny random model",
    )


def embedded_components(folder=None, tokenizer_path=None) -> Components:
    """The committed embedded digits teacher (pixel space, 16x16, identity decoder).

    Falls back to a tiny random pixel-space model with the same interface, with a log line,
    while the embedded files are absent.
    """
    try:
        from hypersd_models.embedded import load_embedded

        teacher = load_embedded(folder, tokenizer_path)
    except (ImportError, FileNotFoundError) as exc:
        log.warning("embedded digits model not available (%s); using a tiny random stand-in", exc)
        comp = tiny_components(tokenizer_path, pixel_space=True)
        comp.kind, comp.description = "embedded", "tiny random stand-in for the embedded digits model"
        return comp
    enc = PromptEncoder([teacher.tokenizer], [teacher.text_encoder], "sd15")
    return Components(
        "embedded",
        teacher.unet,
        enc,
        None,
        teacher.unet.config.in_channels,
        1,
        teacher.resolution,
        description="embedded digits model",
    )


def sd_components(
    kind: str,
    path: str | os.PathLike,
    dtype=torch.float16,
    config: Optional[str] = None,
    tiny_vae: Optional[str] = None,
) -> Components:
    """SD1.5 or SDXL from a local diffusers folder or a single-file checkpoint (``config``: a local
    diffusers folder with the matching model_index/config files, needed offline for single files)."""
    if kind not in ("sd15", "sdxl"):
        raise ValueError(f"kind must be 'sd15' or 'sdxl', got {kind!r}")
    pipe, kind = load_sd_pipeline(path, kind, dtype, config, tiny_vae)
    if kind == "sd15":
        enc = PromptEncoder([pipe.tokenizer], [pipe.text_encoder], "sd15")
    else:
        enc = PromptEncoder([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], "sdxl")
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    return Components(
        kind,
        pipe.unet,
        enc,
        LatentDecoder(pipe.vae),
        pipe.unet.config.in_channels,
        pipe.vae_scale_factor,
        DEFAULT_SIZE[kind],
        pred,
        description=f"{kind} from {path}",
        schedule=schedule_from_config(pipe.scheduler.config),
    )


def load_components(
    kind: str, path=None, dtype=torch.float16, config=None, tiny_vae=None, tokenizer_path=None, controlnet=None
) -> Components:
    """``controlnet``: a ControlNet path, "none" for none; None: the embedded scribble ControlNet for
    the embedded model (when its files exist), none for the others."""
    if kind == "embedded":
        comp = embedded_components(path, tokenizer_path)
    elif kind == "tiny":
        comp = tiny_components(tokenizer_path)
    elif path is None:
        raise ModelLoadError(f"--model {kind} needs --path (a diffusers folder or a .safetensors file)")
    else:
        comp = sd_components(kind, path, dtype, config, tiny_vae)
    if controlnet is not None and str(controlnet) != "none":
        attach_controlnet(comp, controlnet)
    elif controlnet is None and kind == "embedded" and comp.description == "embedded digits model":
        from hypersd_models.controlnet import EMBEDDED_CONTROLNET_DIR

        if (EMBEDDED_CONTROLNET_DIR / "config.json").is_file():
            attach_controlnet(comp)
        else:
            log.warning("embedded scribble ControlNet not found in %s; drawing is off", EMBEDDED_CONTROLNET_DIR)
    return comp


def tune_for_speed(comp: Components) -> None:
    """:func:`tune_modules` for the UNet, the VAE and a ControlNet. Merge any LoRA first: a fused UNet no longer
    reads the separate to_q/to_k/to_v weights a later strength change would write."""
    tune_modules(comp.unet, getattr(comp.decoder, "vae", None), comp.controlnet)


def build_generator(
    comp: Components,
    device="cpu",
    dtype=torch.float32,
    lora: Optional[str] = None,
    lora_strength: float = 1.0,
    tune: bool = False,
    **kwargs,
) -> tuple[Generator, Optional[LoraMerge]]:
    """Move the components to ``device``/``dtype``, merge a LoRA file if given, build the Generator.

    One step without an explicit ``timestep`` runs at the one the LoRA's settings name (our
    dmd/unified LoRAs: 800), as the ComfyUI scheduler node does, else at 999.
    ``tune=True`` applies :func:`tune_for_speed` after the LoRA merge; the returned LoraMerge is
    then None, as its strength can no longer change."""
    for m in (comp.unet, comp.decoder, comp.controlnet, *comp.prompt_encoder.text_encoders):
        if m is None:
            continue
        if next(m.parameters()).dtype != dtype:
            m.to(dtype=dtype)
        m.to(device=device).eval().requires_grad_(False)
    merged = None
    if lora:
        sd, meta = load_lora(lora)
        merged = LoraMerge(comp.unet, sd, lora_strength, metadata=meta)
        log.info("merged %d LoRA modules from %s at strength %s", len(merged), lora, lora_strength)
        settings = lora_settings(os.path.basename(str(lora)), meta)
        if kwargs.get("timestep") is None and settings is not None and settings.onestep_timestep is not None:
            kwargs["timestep"] = int(settings.onestep_timestep)
            log.info("one-step timestep %d from the LoRA's settings", kwargs["timestep"])
    if tune:
        tune_for_speed(comp)
        merged = None
    gen = Generator(
        comp.unet,
        comp.prompt_encoder,
        comp.decoder,
        latent_channels=comp.latent_channels,
        vae_scale_factor=comp.vae_scale_factor,
        dtype=dtype,
        device=device,
        prediction_type=comp.prediction_type,
        sdxl=comp.kind == "sdxl",
        schedule=comp.schedule,
        controlnet=comp.controlnet,
        **kwargs,
    )
    return gen, merged
