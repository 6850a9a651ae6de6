"""The embedded default teacher: a pixel-space diffusers UNet2DConditionModel (no VAE; decoding is
the identity), a small random-init frozen CLIP text encoder, the real CLIP tokenizer, and the
digit classifier, all stored under train/embedded/ (data only: this module imports nothing from
train/). Also the one CLIP tokenizer lookup every loader uses."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hypersd_core.generate import PromptEncoder

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "train" / "embedded"
TOKENIZER_ENV = "HYPERSD_TOKENIZER"

RESOLUTION = 16
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
UNET_CONFIG = dict(
    sample_size=RESOLUTION,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    norm_num_groups=8,
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=4,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)


def build_unet(config: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(config or UNET_CONFIG))


def build_text_encoder(config: dict | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**(config or TEXT_CONFIG))).eval().requires_grad_(False)


def find_tokenizer(folder: str | os.PathLike | None = None) -> Path:
    """The CLIP tokenizer folder: ``folder`` if given, else $HYPERSD_TOKENIZER, else the copy
    committed with the embedded model. A given folder that lacks the files is an error."""
    env = os.environ.get(TOKENIZER_ENV)
    cands = [Path(folder)] if folder else ([Path(env)] if env else []) + [EMBEDDED_DIR / "tokenizer"]
    for cand in cands:
        if (cand / "vocab.json").is_file() and (cand / "merges.txt").is_file():
            return cand
    raise FileNotFoundError(
        f"no CLIP tokenizer (vocab.json + merges.txt) in {', '.join(map(str, cands))}; "
        f"pass a tokenizer folder (tokenizer_path / --tokenizer) or set {TOKENIZER_ENV}"
    )


def load_tokenizer(folder: str | os.PathLike | None = None):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(find_tokenizer(folder)))


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """last_hidden_state of the padded (77-token) prompts, as SD1.5 conditions its UNet."""
    enc = PromptEncoder([tokenizer], [text_encoder], "sd15")
    return enc.encode_ids(*[i.to(enc.device) for i in enc.tokenize(prompts)])["encoder_hidden_states"]


@dataclass
class EmbeddedTeacher:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    meta: dict

    @property
    def resolution(self) -> int:
        return int(self.meta.get("resolution", RESOLUTION))


def embedded_folder(path: str | os.PathLike | None = None) -> Path:
    """The embedded model ``path`` names: None -> the default (train/embedded/); the name of a packaged
    one (a folder under it with a meta.json, e.g. "polarity") -> that folder; anything else -> itself."""
    if path is None:
        return EMBEDDED_DIR
    p = Path(path)
    if not p.exists() and len(p.parts) == 1 and (EMBEDDED_DIR / p / "meta.json").is_file():
        return EMBEDDED_DIR / p
    return p


def packaged_embedded() -> list[str]:
    """Names of the packaged embedded models besides the default."""
    return sorted(d.name for d in EMBEDDED_DIR.iterdir() if (d / "meta.json").is_file())


def load_embedded(folder: str | os.PathLike | None = None, tokenizer_path=None) -> EmbeddedTeacher:
    """Load an embedded teacher (UNet, text encoder, tokenizer) from ``folder`` (see embedded_folder)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = embedded_folder(folder)
    need = [
        folder / "unet" / "diffusion_pytorch_model.safetensors",
        folder / "text_encoder" / "model.safetensors",
        folder / "meta.json",
    ]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"embedded teacher incomplete, missing: {', '.join(missing)}. "
            "Re-create it with: python -m train.embedded.make_embedded"
        )
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet")).float().eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
    text_encoder = text_encoder.float().eval().requires_grad_(False)
    meta = json.loads((folder / "meta.json").read_text())
    return EmbeddedTeacher(unet, text_encoder, load_tokenizer(tokenizer_path), meta)


def classifier_path(folder: str | os.PathLike | None = None) -> Path:
    return embedded_folder(folder) / "classifier"
