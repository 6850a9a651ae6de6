"""The embedded default's metric functions (also used by benchmarks/)."""

import torch

from train.metrics import frechet_distance, prompt_adherence, trajectory_error


def test_frechet_distance_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g)
    assert frechet_distance(a, a) < 1e-6
    assert frechet_distance(a, b) < 0.02
    shifted = frechet_distance(a, b + torch.tensor([2.0, 0.0, 0.0]))
    assert abs(shifted - 4.0) < 0.1  # |mu_a - mu_b|^2
    scaled = frechet_distance(a, 2 * b)  # Tr(S_a + S_b - 2 sqrt(S_a S_b)) = 3 * (1 + 4 - 4)
    assert abs(scaled - 3.0) < 0.15
    dead = torch.cat([a, torch.zeros(4000, 2)], 1)  # singular covariances (dead ReLU units) stay finite
    assert abs(frechet_distance(dead, dead)) < 1e-6


def test_adherence_and_trajectory_error():
    def classifier(x):  # reads the digit from the first pixel: value v in [-1, 1] -> round(4.5 (v + 1))
        return torch.nn.functional.one_hot((4.5 * (x.flatten(1)[:, 0] + 1)).round().long(), 10).float()

    digits = torch.tensor([3, 5, 7, 1])
    images = (digits.float() / 4.5 - 1).reshape(4, 1, 1, 1)
    assert prompt_adherence(classifier, images, torch.tensor([3, 5, 0, 1])) == 0.75
    ref = torch.zeros(2, 1, 2, 2)
    assert trajectory_error(ref, ref) == 0.0
    assert abs(trajectory_error(torch.full((2, 1, 2, 2), 0.5), ref) - 0.5) < 1e-7
