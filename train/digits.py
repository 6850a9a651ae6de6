"""The shipped data set of the embedded default: scikit-learn's 8x8 digits, upscaled, in [-1, 1],
with captions, split once (seeded) into a training part and a held-out part for metrics."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten digit {d}",
    "the number {d}",
    "a drawing of the digit {w}",
    "handwritten {w}",
)
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def caption(digit: int, template: int = 0) -> str:
    """Caption for a digit with one of the templates."""
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(d=digit, w=NUMBER_WORDS[digit])


def all_captions() -> list[tuple[str, int]]:
    """Every (caption, digit) pair the templates produce."""
    return [(caption(d, k), d) for d in range(10) for k in range(len(CAPTION_TEMPLATES))]


@dataclass
class DigitSplit:
    images: torch.Tensor  # (n, 1, R, R) in [-1, 1]
    labels: torch.Tensor  # (n,) int64


def load_digit_splits(resolution: int = 16) -> tuple[DigitSplit, DigitSplit]:
    """(train, held-out) splits of sklearn's digits at ``resolution``, values in [-1, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the embedded default needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(y))
    n_test = int(round(len(y) * TEST_FRACTION))
    te, tr = torch.as_tensor(perm[:n_test]), torch.as_tensor(perm[n_test:])
    return DigitSplit(x[tr], y[tr]), DigitSplit(x[te], y[te])


def random_captions(labels: torch.Tensor, rng: random.Random) -> list[str]:
    """One caption per label with a random template."""
    return [caption(int(d), rng.randrange(len(CAPTION_TEMPLATES))) for d in labels]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (background -1 fills the gap)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


# How an embedded model's training data draws the digits (meta.json "data"): the signs an image may
# be drawn with, one picked at random per image ("polarity": also negated, white on black).
LAYOUTS = {"digits": (1.0,), "polarity": (1.0, -1.0)}


def _forms(layout: str) -> tuple[float, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown digit layout {layout!r}: one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def apply_layout(x: torch.Tensor, layout: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` as ``layout`` draws it: "digits" unchanged; "polarity": each image negated with probability
    1/2, which its caption does not say."""
    forms = _forms(layout)
    if len(forms) == 1:
        return x if forms[0] == 1.0 else x * forms[0]
    pick = torch.rand(len(x), generator=generator) < 0.5  # two forms (the committed teacher's draw)
    return x * torch.where(pick, forms[1], forms[0]).view(-1, 1, 1, 1)


def layout_reader_set(split: DigitSplit, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) to fit a reader of ``layout``: every image in each of the layout's forms."""
    forms = _forms(layout)
    return torch.cat([split.images * f for f in forms]), split.labels.repeat(len(forms))


def layout_held_out(split: DigitSplit, layout: str, seed: int = 1) -> torch.Tensor:
    """The held-out images as ``layout`` draws them (a fixed draw: the real set every metric compares with)."""
    return apply_layout(split.images, layout, torch.Generator().manual_seed(seed))
