"""hypersd_core.rewards: the reward contract and its differentiable preprocessing."""

import pytest
import torch

from hypersd_core.rewards import (
    CLIP_MEAN,
    Reward,
    WeightedRewards,
    clip_preprocess,
    resize_center_crop,
    score,
    to_unit_range,
)


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def test_score_checks_shape_and_prompts():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert isinstance(brightness, Reward)
    assert torch.allclose(score(brightness, x, ["a", "b"]), x.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="one prompt per image"):
        score(brightness, x, ["a"])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        score(brightness, x[0], ["a"])
    with pytest.raises(ValueError, match="must return shape"):
        score(lambda im, p: im.mean(), x, ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        score(lambda im, p: im.mean(dim=(1, 2, 3)) / 0.0, x, ["a", "b"])


def test_clip_preprocess_is_differentiable_and_normalises():
    x = torch.zeros(2, 1, 30, 40, requires_grad=True)  # grey, non-square: resized then cropped
    y = clip_preprocess(x, size=16)
    assert y.shape == (2, 3, 16, 16)
    # 0 in [-1, 1] is 0.5 in [0, 1]
    assert torch.allclose(y[:, 0], torch.full_like(y[:, 0], (0.5 - CLIP_MEAN[0]) / 0.26862954), atol=1e-5)
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_resize_center_crop_keeps_centre():
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6).clone()
    y = resize_center_crop(x, 6)
    assert torch.equal(y, x)
    wide = torch.zeros(1, 1, 4, 8)
    wide[..., 2:6] = 1
    assert torch.allclose(resize_center_crop(wide, 4), torch.ones(1, 1, 4, 4))


def test_to_unit_range_and_weighted_sum():
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]]])
    assert torch.equal(to_unit_range(x), torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]))
    w = WeightedRewards([(2.0, brightness), (-1.0, lambda im, p: im.amax(dim=(1, 2, 3)))])
    imgs = torch.rand(3, 1, 4, 4)
    assert torch.allclose(w(imgs, ["x"] * 3), 2 * imgs.mean(dim=(1, 2, 3)) - imgs.amax(dim=(1, 2, 3)))
    with pytest.raises(ValueError):
        WeightedRewards([])
