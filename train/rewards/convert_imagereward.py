"""Convert the official ImageReward checkpoint into the folder ``imagereward.py`` loads.

    python -m train.rewards.convert_imagereward --checkpoint ImageReward.pt --med-config med_config.json \\
        --tokenizer <bert-base-uncased folder> --out <folder>

Inputs are THUDM/ImageReward's ``ImageReward.pt`` (the state dict of ImageReward's ``ImageReward``
module: ``blip.visual_encoder.*``, a timm-style ViT-L/16; ``blip.text_encoder.*``, BLIP's med.py
BERT with cross-attention; ``blip.vision_proj``/``blip.text_proj``; ``mlp.layers.*``), its
``med_config.json``, and a local bert-base-uncased tokenizer folder (ImageReward downloads that one
at load time). The .pt is read only with ``torch.load(..., weights_only=True)``, PyTorch's restricted
unpickler that rebuilds tensors and plain containers and refuses arbitrary objects.

The output folder holds transformers' ``BlipForImageTextRetrieval`` (config.json, model.safetensors),
the tokenizer with ImageReward's two added tokens ([DEC] = 30522, [ENC] = 30523), the reward head
(mlp.safetensors) and imagereward.json (mean, std, max_length). It is written to a temporary folder
next to ``--out`` and renamed into place, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD

# ImageReward builds BLIP_Pretrain(image_size=224, vit="large"): BLIP's create_vit("large") is this
# ViT (timm's VisionTransformer with qkv_bias=True, LayerNorm eps 1e-6, exact GELU).
VIT_LARGE = dict(
    image_size=224,
    patch_size=16,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)
# ImageReward's score(): max_length 35 and the published normalisation of the MLP output.
SCORE_OPTIONS = dict(mean=IMAGEREWARD_MEAN, std=IMAGEREWARD_STD, max_length=35)
HEAD_LAYERS = (0, 2, 4, 6, 7)  # the Linear layers of ImageReward's MLP (1, 3, 5 are Dropout)
# BLIP's ITM head is not part of ImageReward; it is written as zeros so the folder loads without
# random initialisation (the reward never uses it).
NOT_IN_IMAGEREWARD = ("itm_head.weight", "itm_head.bias")

# timm ViT module names -> transformers' BlipVisionModel names.
_VISION_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
# Both fuse q, k, v in one Linear reshaped as (3, heads, head_dim), so qkv copies unchanged.
_VISION_BLOCK = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


class ImageRewardConversionError(ValueError):
    """The ImageReward files are missing, unreadable or not shaped like ImageReward's model."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """ImageReward.pt through the restricted unpickler (weights_only=True): tensors only, no code."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageRewardConversionError(
            f"checkpoint {p} does not exist; give --checkpoint the ImageReward.pt "
            "downloaded from huggingface.co/THUDM/ImageReward"
        )
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ImageRewardConversionError(
            f"{p} could not be read with torch.load(weights_only=True), the restricted unpickler that only "
            f"rebuilds tensors ({type(e).__name__}: {str(e)[:300]}). Use the official ImageReward.pt; files "
            "holding other pickled objects are refused rather than executed."
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ImageRewardConversionError(
            f"{p} is not a state dict of tensors (got {type(sd).__name__}); "
            "expected ImageReward.pt as saved by ImageReward's training"
        )
    return dict(sd)


def read_med_config(path: str | os.PathLike) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageRewardConversionError(
            f"med config {p} does not exist; give --med-config the med_config.json "
            "from huggingface.co/THUDM/ImageReward"
        )
    med = json.loads(p.read_text())
    if not med.get("add_cross_attention", False):
        raise ImageRewardConversionError(
            f"{p}: add_cross_attention is not true; ImageReward's text encoder "
            "attends to the image, this is not its med_config.json"
        )
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ImageRewardConversionError(
            f"{p}: position_embedding_type {med['position_embedding_type']!r} is not "
            "supported (transformers' BLIP text model uses absolute positions)"
        )
    return med


def blip_config(med: dict, vision: dict = VIT_LARGE):
    """transformers BlipConfig for ImageReward's BLIP: text from med_config.json, vision from ``vision``."""
    from transformers import BlipConfig

    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "pad_token_id",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "initializer_range",
    )
    text = {k: med[k] for k in keys if k in med}
    # is_decoder builds the cross-attention layers; the reward still runs the text model bidirectionally.
    text.update(is_decoder=True, encoder_hidden_size=vision["hidden_size"])
    return BlipConfig(text_config=text, vision_config=dict(vision), image_text_hidden_size=256)


def rename(key: str) -> tuple[str, str] | None:
    """(target file, transformers name) of one ImageReward key; None when it has no counterpart."""
    if key.startswith("blip.visual_encoder."):
        rest = key[len("blip.visual_encoder.") :]
        if rest in _VISION_TOP:
            return "model", "vision_model." + _VISION_TOP[rest]
        m = _BLOCK_RE.fullmatch(rest)
        if m and m.group(2) in _VISION_BLOCK:
            return "model", f"vision_model.encoder.layers.{m.group(1)}.{_VISION_BLOCK[m.group(2)]}.{m.group(3)}"
        return None
    if key.startswith("blip.text_encoder."):
        rest = key[len("blip.text_encoder.") :]
        # med.py's BertModel and transformers' BlipTextModel use the same module names.
        return "model", "text_encoder." + rest
    for proj in ("vision_proj", "text_proj"):
        if key.startswith(f"blip.{proj}."):
            return "model", key[len("blip.") :]
    if key.startswith("mlp.layers."):
        return "head", key[len("mlp.") :]
    return None


def _few(keys, n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def map_state_dict(sd: dict[str, torch.Tensor], config) -> tuple[dict, dict]:
    """Split and rename ImageReward's state dict into (BlipForImageTextRetrieval weights, head weights),
    checking every key and shape against the model ``config`` describes."""
    from transformers import BlipForImageTextRetrieval

    with torch.device("meta"):
        expected = {k: v.shape for k, v in BlipForImageTextRetrieval(config).state_dict().items()}
    blip, head, unexpected = {}, {}, []
    for key, value in sd.items():
        if key == "blip.text_encoder.embeddings.position_ids":
            continue  # a saved arange buffer in med.py; transformers rebuilds it
        target = rename(key)
        if target is None or (target[0] == "model" and target[1] not in expected):
            unexpected.append(key)
        else:
            (blip if target[0] == "model" else head)[target[1]] = value.contiguous()
    missing = set(expected) - set(blip) - set(NOT_IN_IMAGEREWARD)
    head_keys = {f"layers.{i}.{p}" for i in HEAD_LAYERS for p in ("weight", "bias")}
    missing |= {"mlp." + k for k in head_keys - set(head)}
    unexpected += ["mlp." + k for k in set(head) - head_keys]
    if unexpected or missing:
        raise ImageRewardConversionError(
            "the checkpoint does not match ImageReward's model"
            + (f"; unexpected keys: {_few(unexpected)}" if unexpected else "")
            + (f"; missing (transformers names): {_few(missing)}" if missing else "")
            + ". Give the official ImageReward.pt with its med_config.json."
        )
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k])}" for k, v in blip.items() if v.shape != expected[k]]
    bad += _head_shape_errors(head, config.text_config.hidden_size)
    if bad:
        raise ImageRewardConversionError(
            f"shape mismatch (checkpoint vs the model med_config.json + ViT-L/16 at 224 px describe): {_few(bad, 4)}. "
            "Check that --med-config is the med_config.json that came with this checkpoint."
        )
    for k in NOT_IN_IMAGEREWARD:
        blip[k] = torch.zeros(expected[k], dtype=blip["text_proj.weight"].dtype)
    return blip, head


def _head_shape_errors(head: dict, width: int) -> list[str]:
    """The head must chain width -> ... -> 1 through layers 0, 2, 4, 6, 7."""
    errors, n_in = [], width
    for i in HEAD_LAYERS:
        w, b = head[f"layers.{i}.weight"], head[f"layers.{i}.bias"]
        if w.ndim != 2 or w.shape[1] != n_in or b.shape != (w.shape[0],):
            errors.append(f"mlp.layers.{i}: weight {tuple(w.shape)}, bias {tuple(b.shape)} after {n_in} features")
            break
        n_in = w.shape[0]
    else:
        if n_in != 1:
            errors.append(f"mlp.layers.7 gives {n_in} outputs, expected 1")
    return errors


def imagereward_tokenizer(folder: str | os.PathLike, vocab_size: int):
    """bert-base-uncased plus the tokens BLIP's init_tokenizer adds ([DEC] as bos, [ENC])."""
    from transformers import BertTokenizer

    p = Path(folder).expanduser()
    if not p.is_dir() or not any((p / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise ImageRewardConversionError(
            f"tokenizer folder {p} does not exist or lacks vocab.txt; give --tokenizer a "
            "local copy of the bert-base-uncased tokenizer (vocab.txt, tokenizer_config.json)"
        )
    tok = BertTokenizer.from_pretrained(str(p))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tok) != vocab_size:
        raise ImageRewardConversionError(
            f"the tokenizer in {p} has {len(tok)} tokens with [DEC] and [ENC] added, but med_config.json says "
            f"vocab_size {vocab_size}; ImageReward uses bert-base-uncased (30522 + 2)"
        )
    return tok


def convert(checkpoint, med_config, tokenizer, out, vision: dict = VIT_LARGE, overwrite: bool = False) -> Path:
    """Write the converted folder at ``out`` (atomically) and return its path."""
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ImageRewardConversionError(
            f"{out} exists and is not empty; remove it, pick another --out or pass --overwrite"
        )
    med = read_med_config(med_config)
    config = blip_config(med, vision)
    tok = imagereward_tokenizer(tokenizer, config.text_config.vocab_size)
    blip, head = map_state_dict(read_checkpoint(checkpoint), config)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        config.save_pretrained(tmp)
        save_file(blip, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_file(head, str(tmp / "mlp.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        options = dict(
            SCORE_OPTIONS,
            source=Path(checkpoint).name,
            note="converted by train.rewards.convert_imagereward; itm_head is zeros (not in ImageReward)",
        )
        (tmp / "imagereward.json").write_text(json.dumps(options, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; give it a normal folder's mode
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.rewards.convert_imagereward", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="ImageReward.pt from huggingface.co/THUDM/ImageReward")
    ap.add_argument("--med-config", required=True, help="med_config.json from the same place")
    ap.add_argument("--tokenizer", required=True, help="local bert-base-uncased tokenizer folder (vocab.txt)")
    ap.add_argument("--out", required=True, help="folder to write; give it as the imagereward reward's path")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    try:
        out = convert(args.checkpoint, args.med_config, args.tokenizer, args.out, overwrite=args.overwrite)
    except ImageRewardConversionError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out}; use it as rewards: [{{name: imagereward, path: {out}}}]")


if __name__ == "__main__":
    main()
