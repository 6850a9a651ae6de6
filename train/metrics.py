"""Metrics of the embedded default (the benchmark reuses them): Fréchet distance in the digit
classifier's feature space against held-out real digits, prompt adherence (classifier accuracy
on the captioned digit) and trajectory error (RMS distance to the teacher's 50-step DDIM result
from the same noise)."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (rows = samples)."""
    from scipy import linalg

    a, b = feats_a.double().cpu().numpy(), feats_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make the covariances singular; handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + off) @ (s_b + off))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


@torch.no_grad()
def classifier_features(classifier, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([classifier.features(images[i:i + batch].clamp(-1, 1).float()) for i in range(0, len(images), batch)])


@torch.no_grad()
def prompt_adherence(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images the classifier reads as the digit their caption asked for."""
    pred = classifier(images.clamp(-1, 1).float()).argmax(1)
    return float((pred.cpu() == labels.cpu()).float().mean())


def trajectory_error(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over images of the RMS pixel distance to the reference (same noise, same prompt)."""
    d = (images.float() - reference.float()).flatten(1)
    return float(d.pow(2).mean(1).sqrt().mean())


def digit_eval_set(per_digit: int, resolution: int, seed: int, channels: int = 1):
    """(labels, prompts, noise) of an evaluation run: ``per_digit`` samples of every digit."""
    from .digits import random_captions

    labels = torch.arange(10).repeat_interleave(per_digit)
    prompts = random_captions(labels, random.Random(seed))
    noise = torch.randn((len(labels), channels, resolution, resolution), generator=torch.Generator().manual_seed(seed))
    return labels, prompts, noise


def score_images(classifier, images, labels, real_feats, reference=None) -> dict:
    out = {"frechet": frechet_distance(classifier_features(classifier, images), real_feats),
           "adherence": prompt_adherence(classifier, images, labels)}
    if reference is not None:
        out["trajectory_error"] = trajectory_error(images, reference)
    return out
