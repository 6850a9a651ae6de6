"""Metrics of the embedded default (the benchmark reuses them), judged by an independent digit
reader (DigitReader: fitted on the training digits, never a training loss or reward): prompt
adherence (its accuracy on the captioned digit), Fréchet distance in its features to held-out real
digits and to the teacher's many-step samples (distillation fidelity), and trajectory error (RMS
distance to the teacher's many-step DDIM result from the same noise)."""

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
    return torch.cat(
        [classifier.features(images[i : i + batch].clamp(-1, 1).float()) for i in range(0, len(images), batch)]
    )


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


def score_images(classifier, images, labels, real_feats, reference=None, reader=None) -> dict:
    """Without ``reader``: the classifier's Fréchet distance to ``real_feats`` (its features) and adherence.
    With ``reader`` (DigitReader): ``real_feats`` = {"reader": ..., "reward": ...} features of real digits;
    adherence and both Fréchet distances (to real digits and to ``reference``, the teacher's many-step
    samples) are the reader's, ``adherence_reward``/``frechet_reward`` the classifier's."""
    if reader is None:
        out = {
            "frechet": frechet_distance(classifier_features(classifier, images), real_feats),
            "adherence": prompt_adherence(classifier, images, labels),
        }
    else:
        f = reader.features(images)
        out = {
            "adherence": reader.adherence(images, labels),
            "frechet": frechet_distance(f, real_feats["reader"]),
            "adherence_reward": prompt_adherence(classifier, images, labels),
            "frechet_reward": frechet_distance(classifier_features(classifier, images), real_feats["reward"]),
        }
        if reference is not None:
            out["frechet_teacher"] = frechet_distance(f, reader.features(reference))
    if reference is not None:
        out["trajectory_error"] = trajectory_error(images, reference)
    return out


# -- the independent reader ------------------------------------------------------------------------
class DigitReader:
    """A digit reader the trainer never sees: scikit-learn's MLP (one hidden layer of 64 ReLUs) on
    the images average-pooled to the data set's native 8x8, fitted deterministically on the training
    split of load_digits at evaluation time (a second or two). Its predictions give prompt adherence,
    its hidden layer the features of the Fréchet distances. The embedded classifier, by contrast, is
    the feedback reward, so it cannot judge a trainer that may have optimised it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, hidden: int = 64, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        self.mlp = MLPClassifier(
            hidden_layer_sizes=(hidden,), solver="lbfgs", alpha=1e-2, max_iter=300, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the fit is still deterministic
            self.mlp.fit(self._pixels(images), labels.cpu().numpy())

    @staticmethod
    def _pixels(images: torch.Tensor) -> np.ndarray:
        x = images.detach().float().cpu().clamp(-1, 1)
        if x.shape[1] > 1:
            x = x.mean(1, keepdim=True)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 8)
        return ((x + 1) / 2).flatten(1).double().numpy()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        h = self._pixels(images) @ self.mlp.coefs_[0] + self.mlp.intercepts_[0]
        return torch.from_numpy(np.maximum(h, 0.0))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.mlp.predict(self._pixels(images)))

    def adherence(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(images) == labels.cpu()).float().mean())


_READERS: dict[tuple[int, str], DigitReader] = {}


def digit_reader(resolution: int, layout: str = "digits") -> DigitReader:
    """The reader for images at ``resolution`` drawn as ``layout`` (train.digits.LAYOUTS), fitted
    once per process on the training split in each of the layout's forms."""
    if (resolution, layout) not in _READERS:
        from .digits import layout_reader_set, load_digit_splits

        train, _ = load_digit_splits(resolution)
        _READERS[resolution, layout] = DigitReader(*layout_reader_set(train, layout))
    return _READERS[resolution, layout]


def layout_judge(resolution: int, layout: str = "digits") -> tuple[DigitReader, torch.Tensor]:
    """The reader of ``layout`` and the held-out digits as the layout draws them (the real set
    every metric compares with): what the trainer's eval and the benchmarks judge a model by."""
    from .digits import layout_held_out, load_digit_splits

    _, test = load_digit_splits(resolution)
    return digit_reader(resolution, layout), layout_held_out(test, layout)
