"""The embedded default's reward, needing no download: the shipped digit classifier's
log-probability of the digit the caption asks for, plus a cleanliness term that penalises
high-frequency noise and values outside [-1, 1] (real upscaled digits are smooth)."""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._files import freeze

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_RE = re.compile(r"\b(\d|" + "|".join(_WORDS) + r")\b")


def digit_of(prompt: str) -> int:
    """The digit a caption asks for ("a handwritten digit 7", "handwritten seven" -> 7)."""
    m = _DIGIT_RE.findall(prompt.lower())
    if not m:
        raise ValueError(f"no digit (0-9 or zero..nine) in caption {prompt!r}; the digit reward needs one")
    tok = m[-1]
    return int(tok) if tok.isdigit() else _WORDS.index(tok)


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference between the image and its 3x3 box blur."""
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (images - blur).pow(2).flatten(1).mean(1)


def cleanliness(images: torch.Tensor, hf_scale: float = 10.0) -> torch.Tensor:
    """-(hf_scale * high-frequency energy + mean overshoot beyond [-1, 1]), per image; 0 is best."""
    overshoot = F.relu(images.abs() - 1).flatten(1).mean(1)
    return -(hf_scale * high_frequency_energy(images) + overshoot)


class DigitReward(nn.Module):
    """log p(captioned digit | image) + clean_weight * cleanliness(image)."""

    def __init__(self, classifier: nn.Module, clean_weight: float = 1.0, hf_scale: float = 10.0):
        super().__init__()
        self.classifier = freeze(classifier)
        self.clean_weight = float(clean_weight)
        self.hf_scale = float(hf_scale)

    @classmethod
    def from_files(
        cls, path: str | None = None, clean_weight: float = 1.0, hf_scale: float = 10.0, device=None
    ) -> "DigitReward":
        """From the classifier folder (default: the embedded one, train/embedded/classifier)."""
        from hypersd_models.classifier import DigitClassifier
        from hypersd_models.embedded import classifier_path

        reward = cls(DigitClassifier.load(path or classifier_path()), clean_weight, hf_scale)
        return reward.to(device) if device is not None else reward

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        x = images.float()
        res = getattr(self.classifier, "config", {}).get("resolution")
        if res and x.shape[-1] != res:
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        target = torch.tensor([digit_of(p) for p in prompts], device=x.device)
        logp = F.log_softmax(self.classifier(x), dim=-1)
        r = logp.gather(1, target[:, None])[:, 0]
        if self.clean_weight:
            r = r + self.clean_weight * cleanliness(images.float(), self.hf_scale)
        return r
