"""ControlNets: the embedded digit scribble ControlNet (built from the teacher UNet with diffusers'
``ControlNetModel.from_unet``), loading a user's ControlNet with a check that it was made for the
base model, and the scribble a digit image is reduced to (what the embedded ControlNet is trained
on, what the benchmark compares a generated digit's strokes with).

A ControlNet is used through hypersd_core's ``UNetNet(unet, controlnet=...)``: the core calls it
with diffusers' signature and adds its residuals to the UNet's; this module only loads and checks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .embedded import EMBEDDED_DIR
from .loading import ModelLoadError

EMBEDDED_CONTROLNET_DIR = EMBEDDED_DIR / "controlnet"
# Pixel space: the control image has the image's own size, so the conditioning embedding must not
# downsample (one entry = one conv, no stride-2 block).
EMBEDDED_CONDITIONING_CHANNELS = (16,)
SCRIBBLE_THRESHOLD = 0.0  # ink above this (images in [-1, 1]) is a stroke

# UNet config keys a ControlNet must share with the UNet it steers (its residuals are added to the
# UNet's down/mid blocks, its attention reads the same text embeddings).
MATCH_KEYS = ("in_channels", "block_out_channels", "cross_attention_dim", "layers_per_block", "down_block_types")


def scribble(images: torch.Tensor, threshold: float = SCRIBBLE_THRESHOLD) -> torch.Tensor:
    """Digit images (B, 1, H, W) in [-1, 1] -> their strokes as a binary control image in {0, 1}
    (1 = ink): the input of the embedded ControlNet, and how a generated image's strokes are read
    back for control agreement."""
    return (images.float() > threshold).float()


def stroke_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image intersection over union of two binary stroke maps (B, 1, H, W) -> (B,); two empty
    maps agree fully (1.0)."""
    a, b = a.flatten(1) > 0.5, b.flatten(1) > 0.5
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def build_embedded_controlnet(unet, seed: int = 0):
    """A scribble ControlNet for a pixel-space UNet: its encoder copied from ``unet``, a 1-channel
    conditioning input at the image's resolution, zero-initialised output convolutions."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=EMBEDDED_CONDITIONING_CHANNELS, conditioning_channels=1
    )


def _config(model) -> dict:
    cfg = getattr(model, "config", {})
    return dict(cfg) if not isinstance(cfg, dict) else cfg


def check_controlnet_matches(controlnet, unet, name: str = "the ControlNet") -> None:
    """ModelLoadError (one line) when ``controlnet`` was made for another base model than ``unet``."""
    c, u = _config(controlnet), _config(unet)
    for key in MATCH_KEYS:
        cv, uv = (list(v) if isinstance(v, (list, tuple)) else v for v in (c.get(key), u.get(key)))
        if cv is None or uv is None:
            continue
        if cv != uv:
            raise ModelLoadError(
                f"{name} was made for another base model: its {key} is {cv}, the UNet's is {uv}; "
                "use a ControlNet trained for this model (e.g. an SD1.5 ControlNet with SD1.5)"
            )


def load_controlnet(path: str | os.PathLike | None = None, unet=None, dtype=torch.float32):
    """A diffusers ControlNetModel from a local folder (config.json + diffusion_pytorch_model.safetensors)
    or from a single .safetensors file of the original (lllyasviel) layout with ``unet``'s config;
    ``path`` None: the embedded scribble ControlNet. With ``unet``, refuses a ControlNet made for
    another base model. Nothing is downloaded; nothing is unpickled."""
    from diffusers import ControlNetModel

    p = Path(path) if path is not None else EMBEDDED_CONTROLNET_DIR
    if not p.exists():
        raise ModelLoadError(
            f"ControlNet not found: {p}; give a diffusers ControlNet folder (config.json + "
            "diffusion_pytorch_model.safetensors) or a .safetensors file"
            + (" (re-create the embedded one with: python -m train.embedded.make_controlnet)" if path is None else "")
        )
    try:
        if p.is_dir():
            weights = p / "diffusion_pytorch_model.safetensors"
            if not (p / "config.json").is_file() or not weights.is_file():
                raise ModelLoadError(
                    f"{p} is not a diffusers ControlNet folder: it needs config.json and "
                    "diffusion_pytorch_model.safetensors"
                )
            net = ControlNetModel.from_pretrained(str(p), torch_dtype=dtype, use_safetensors=True)
        elif p.suffix != ".safetensors":
            raise ModelLoadError(f"{p.name}: only .safetensors ControlNets are loaded (no pickled .pth/.ckpt files)")
        else:
            net = _single_file(p, unet, dtype)
    except ModelLoadError:
        raise
    except Exception as e:  # diffusers' own message for a broken folder/file, on one line
        raise ModelLoadError(f"cannot load a ControlNet from {p}: {str(e).splitlines()[0][:300]}") from e
    if unet is not None:
        check_controlnet_matches(net, unet, f"the ControlNet {p.name}")
    return net.eval().requires_grad_(False)


def _single_file(p: Path, unet, dtype):
    """One .safetensors ControlNet file, original (lllyasviel: control_v11p_sd15_*) or diffusers
    layout: converted with diffusers' single-file converter and loaded into a ControlNet built from
    ``unet``'s config (a ControlNet copies its UNet's encoder), so no config is downloaded. Tensors
    that do not fit mean it was made for another base model."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    if unet is None:
        raise ModelLoadError(f"{p.name}: loading a single-file ControlNet needs the UNet it belongs to")
    sd = load_file(str(p))
    if not sd:
        raise ModelLoadError(f"{p.name} holds no tensors")
    probe = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    sd = convert_controlnet_checkpoint(sd, dict(probe.config))
    hint = sorted(
        (int(m.group(1)), v)
        for k, v in sd.items()
        if (m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.weight", k))
    )
    conv_in = sd.get("controlnet_cond_embedding.conv_in.weight")
    if conv_in is None:
        raise ModelLoadError(
            f"{p.name} is not a ControlNet: it has no conditioning embedding (controlnet_cond_embedding)"
        )
    embed = (conv_in.shape[0],) + tuple(v.shape[0] for i, v in hint if i % 2 == 1)
    net = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=embed,
        load_weights_from_unet=False,
        conditioning_channels=conv_in.shape[1],
    )
    own = net.state_dict()
    bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if bad or missing or unexpected:
        raise ModelLoadError(
            f"{p.name} was made for another base model: {len(bad)} tensors of another shape, {len(missing)} "
            f"missing, {len(unexpected)} unexpected for this UNet (e.g. {(bad + missing + unexpected)[0]})"
        )
    net.load_state_dict(sd)
    return net.to(dtype)


def control_image_from_array(arr, channels: int, size: int, binarize: bool = False) -> torch.Tensor:
    """A uint8 image (H, W) or (H, W, C) -> a control image (1, channels, size, size) in [0, 1]
    (area-resized; RGB averaged to gray for a 1-channel ControlNet, gray repeated for 3).
    ``binarize``: strokes = pixels at least half white, as the embedded scribbles are binary."""
    x = torch.as_tensor(arr).float() / 255.0
    if x.ndim == 2:
        x = x[..., None]
    x = x.permute(2, 0, 1)[None]
    if x.shape[1] == 4:  # drop alpha
        x = x[:, :3]
    if channels == 1 and x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    elif channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    if binarize:
        x = (x >= 0.5).float()
    return x.clamp(0, 1).contiguous()
