"""A small CNN digit classifier for the embedded default: its penultimate features give the
Fréchet distance, its accuracy on the captioned digit gives prompt adherence, and it is
differentiable so feedback stages can use it as a reward model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hypersd_core.lora_formats import atomic_write


class DigitClassifier(nn.Module):
    """conv(16) -> conv(32) -> pool -> conv(64) -> pool -> fc(feature_dim) -> fc(10); input in [-1, 1]."""

    def __init__(self, resolution: int = 16, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.config = {"resolution": resolution, "feature_dim": feature_dim, "num_classes": num_classes}
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (resolution // 4) ** 2, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after ReLU), the space the Fréchet distance is measured in."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(str(folder / "model.safetensors"), lambda tmp: save_file(sd, tmp))
        atomic_write(str(folder / "config.json"), lambda tmp: Path(tmp).write_text(json.dumps(self.config, indent=2)))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "DigitClassifier":
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"digit classifier file missing: {p} (re-create it with python -m train.embedded.make_embedded)"
                )
        model = cls(**json.loads(cfg_path.read_text()))
        model.load_state_dict(load_file(str(w_path)))
        return model.eval().requires_grad_(False)
