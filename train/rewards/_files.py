"""Checks for the local files reward models load from: errors name exactly what is missing."""

from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class RewardFilesError(FileNotFoundError):
    """A reward model's local files are missing or in a format we do not load."""


def require_model_folder(path: str | os.PathLike, what: str, hint: str) -> Path:
    """A transformers model folder: config.json plus safetensors weights."""
    if path is None:
        raise RewardFilesError(f"{what}: no folder given (set it in the reward's config entry). {hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise RewardFilesError(f"{what}: folder {p} does not exist. {hint}")
    missing = [] if (p / "config.json").is_file() else ["config.json"]
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        pickled = [f for f in ("pytorch_model.bin", "model.ckpt") if (p / f).is_file()]
        extra = (
            f" (found {pickled[0]}: convert it to model.safetensors; pickled weights are not loaded)" if pickled else ""
        )
        missing.append("model.safetensors" + extra)
    if missing:
        raise RewardFilesError(f"{what}: {p} lacks {', '.join(missing)}. {hint}")
    return p


def load_safetensors(path: str | os.PathLike, what: str, hint: str) -> dict[str, torch.Tensor]:
    """A .safetensors state dict (never pickle)."""
    from safetensors.torch import load_file

    if path is None:
        raise RewardFilesError(f"{what}: no weights file given (set it in the reward's config entry). {hint}")
    p = Path(path).expanduser()
    if p.suffix != ".safetensors":
        raise RewardFilesError(
            f"{what}: {p.name} is not a .safetensors file; convert it first, e.g. "
            f"python -c \"import torch,safetensors.torch as s; s.save_file(torch.load('{p.name}', weights_only=True), "
            f"'{p.stem}.safetensors')\" (only if you trust the file). {hint}"
        )
    if not p.is_file():
        raise RewardFilesError(f"{what}: weights file {p} does not exist. {hint}")
    return load_file(str(p))


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no parameter gradients: the reward stays fixed, gradients still reach inputs."""
    module.eval()
    module.requires_grad_(False)
    return module
