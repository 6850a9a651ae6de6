"""ImageReward (Xu et al. 2023): BLIP ViT-L image encoder, BERT text encoder with cross-attention
to the image, and an MLP on the [CLS] feature, normalised by the published mean/std.

The `image-reward` PyPI package is not used: it pins timm 0.6.13 / fairscale, fetches
bert-base-uncased from the Hub at load time and reads its checkpoint with pickle. This module
runs the same computation on transformers' ``BlipForImageTextRetrieval`` from a local folder:

    <folder>/config.json, model.safetensors   BlipForImageTextRetrieval (vision ViT-L, text BERT)
    <folder>/tokenizer.json or vocab.txt       the BERT tokenizer (+ [DEC], [ENC] as ImageReward adds)
    <folder>/mlp.safetensors                   the reward head (keys layers.0/2/4/6/7)
    <folder>/imagereward.json                  optional {"mean": .., "std": .., "max_length": 35}

Make the folder from the official files (huggingface.co/THUDM/ImageReward) once:

    python -m train.rewards.convert_imagereward --checkpoint ImageReward.pt --med-config med_config.json \\
        --tokenizer <bert-base-uncased folder> --out <folder>

Checked against ImageReward's own code (THUDM/ImageReward at c1392c6, full size, random weights):
same token ids, and scores equal to its ``score()`` within 1.1e-6 on 224 px images, and to
``score_gard()`` after its ReFL tensor preprocessing within 7.2e-7 on 512 px and 320x480 images.
On other sizes ``score()`` resizes with PIL, this module with torch (differentiable); there the
two differ by about 1.5e-3.
"""

from __future__ import annotations

import json
from typing import Sequence

import torch
from torch import nn

from hypersd_core.rewards import clip_preprocess

from ._files import RewardFilesError, freeze, load_safetensors, require_model_folder
from .aesthetic import AestheticHead

# ImageReward's published normalisation of the raw MLP output.
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
HINT = (
    "Give path = a folder holding a transformers BlipForImageTextRetrieval model (config.json + "
    "model.safetensors), its BERT tokenizer files, and the ImageReward head as mlp.safetensors; make it from the "
    "official ImageReward.pt with python -m train.rewards.convert_imagereward."
)


class ImageRewardModel(nn.Module):
    """ImageReward score per (image, prompt) pair; about N(0, 1) over real generations."""

    def __init__(self, path: str, device=None, dtype=torch.float32):
        super().__init__()
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        folder = require_model_folder(path, "ImageReward model", HINT)
        if not (folder / "mlp.safetensors").is_file():
            raise RewardFilesError(f"ImageReward model: {folder} lacks mlp.safetensors (the reward head). {HINT}")
        if not any((folder / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
            raise RewardFilesError(
                f"ImageReward model: {folder} lacks the BERT tokenizer (vocab.txt or tokenizer.json). {HINT}"
            )
        opts = json.loads((folder / "imagereward.json").read_text()) if (folder / "imagereward.json").is_file() else {}
        self.mean = float(opts.get("mean", IMAGEREWARD_MEAN))
        self.std = float(opts.get("std", IMAGEREWARD_STD))
        self.max_length = int(opts.get("max_length", 35))
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        blip = BlipForImageTextRetrieval.from_pretrained(str(folder), dtype=dtype)
        self.vision = freeze(blip.vision_model)
        self.text = freeze(blip.text_encoder)
        self.head = freeze(
            AestheticHead(load_safetensors(folder / "mlp.safetensors", "ImageReward head", HINT)).to(dtype)
        )
        self.size = blip.config.vision_config.image_size
        if device is not None:
            self.to(device)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        p = next(self.vision.parameters())
        x = clip_preprocess(images.to(p.dtype), self.size)
        image_embeds = self.vision(pixel_values=x).last_hidden_state
        tok = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(p.device)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=p.device)
        out = self.text(
            input_ids=tok.input_ids,
            attention_mask=tok.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=atts,
            return_dict=True,
        )
        r = self.head(out.last_hidden_state[:, 0, :])
        return ((r - self.mean) / self.std).float()
