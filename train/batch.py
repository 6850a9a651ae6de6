"""The training batch both the data layer (train/data) and the stages (train/stages) use."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One training batch in model space (latents, or pixels for the embedded model)."""

    x0: torch.Tensor
    cond: torch.Tensor  # encoder_hidden_states
    prompts: list[str]
    added_cond: dict | None = None  # SDXL: {"text_embeds", "time_ids"}
