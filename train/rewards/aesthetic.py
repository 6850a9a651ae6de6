"""The LAION aesthetic predictor: an MLP (or linear head) over L2-normalised CLIP ViT-L/14 image
embeddings, from local files (a transformers CLIP vision folder + the head as .safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from hypersd_core.rewards import CLIP_MEAN, CLIP_STD, clip_preprocess

from ._files import freeze, load_safetensors, require_model_folder

HINT = (
    "Give clip_path = a folder with a CLIP ViT-L/14 vision model saved by transformers (config.json + "
    "model.safetensors, e.g. openai/clip-vit-large-patch14) and head_path = the aesthetic head as "
    ".safetensors (improved-aesthetic-predictor's sac+logos+ava1-l14-linearMSE weights, keys layers.*)."
)


class AestheticHead(nn.Module):
    """improved-aesthetic-predictor's MLP (keys layers.0/2/4/6/7) or a single linear layer."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        if "layers.0.weight" in state_dict:
            dims = [state_dict[f"layers.{i}.weight"].shape for i in (0, 2, 4, 6, 7)]
            self.layers = nn.Sequential(
                nn.Linear(dims[0][1], dims[0][0]),
                nn.Dropout(0.2),
                nn.Linear(dims[1][1], dims[1][0]),
                nn.Dropout(0.2),
                nn.Linear(dims[2][1], dims[2][0]),
                nn.Dropout(0.1),
                nn.Linear(dims[3][1], dims[3][0]),
                nn.Linear(dims[4][1], dims[4][0]),
            )
        else:
            keys = [k for k in state_dict if k.endswith("weight")]
            if len(keys) != 1 or state_dict[keys[0]].shape[0] != 1:
                raise ValueError(
                    f"aesthetic head: expected keys layers.0..7 (MLP) or one (1, D) linear weight, got {sorted(state_dict)[:6]}"
                )
            prefix = keys[0][: -len("weight")]
            state_dict = {"layers.0." + k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            self.layers = nn.Sequential(nn.Linear(state_dict["layers.0.weight"].shape[1], 1))
        self.load_state_dict(state_dict)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.layers(emb).squeeze(-1)


class AestheticReward(nn.Module):
    """Predicted LAION aesthetic score (about 1-10) of each image; prompts are ignored."""

    def __init__(self, clip_path: str, head_path: str, device=None, dtype=torch.float32):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        folder = require_model_folder(clip_path, "aesthetic reward CLIP model", HINT)
        head_sd = load_safetensors(head_path, "aesthetic reward head", HINT)
        self.clip = freeze(CLIPVisionModelWithProjection.from_pretrained(str(folder), dtype=dtype))
        self.head = freeze(AestheticHead(head_sd).to(dtype))
        proj = self.clip.config.projection_dim
        if proj != self.head.in_features:
            raise ValueError(
                f"aesthetic head takes {self.head.in_features}-d embeddings but the CLIP model at "
                f"{folder} projects to {proj}; use CLIP ViT-L/14 (768) with the L/14 head"
            )
        self.size, self.mean, self.std = _preprocessor(folder, self.clip.config.image_size)
        if device is not None:
            self.to(device)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        p = next(self.clip.parameters())
        x = clip_preprocess(images.to(p.dtype), self.size, self.mean, self.std)
        emb = self.clip(pixel_values=x).image_embeds
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return self.head(emb).float()


def _preprocessor(folder: Path, default_size: int):
    """Image size, mean and std from preprocessor_config.json when present, else CLIP's."""
    cfg_path = folder / "preprocessor_config.json"
    if not cfg_path.is_file():
        return default_size, CLIP_MEAN, CLIP_STD
    cfg = json.loads(cfg_path.read_text())
    crop = cfg.get("crop_size", default_size)
    size = crop.get("height", default_size) if isinstance(crop, dict) else int(crop)
    return size, tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
