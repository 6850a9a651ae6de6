"""ReFL on a tiny UNet + LoRA: the no-grad head of the trajectory is exactly the TSCD sampler's,
gradients reach the LoRA through the last step, and a few steps raise a simple reward."""

import pytest
import torch

from hypersd_core.samplers import get_sigmas_tscd, sample_tscd, seeded_noise_sampler
from hypersd_core.schedule import VPSchedule
from train.stages.feedback import FeedbackOptions, data_x0, feedback_loss, pick_stop, refl_x0, student_denoiser

SCHED = VPSchedule.scaled_linear()


def test_pick_stop_is_late():
    rng = torch.Generator().manual_seed(0)
    assert {pick_stop(1, 0.5, rng) for _ in range(20)} == {0}
    assert {pick_stop(8, 0.5, rng) for _ in range(200)} == {4, 5, 6, 7}
    assert {pick_stop(4, 0.0, rng) for _ in range(200)} == {0, 1, 2, 3}


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_refl_head_matches_sample_tscd(tiny_unet, embeddings, eta):
    cond, _ = embeddings
    den = student_denoiser(tiny_unet, cond, SCHED)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sigmas = get_sigmas_tscd(4, SCHED, spacing="trailing")
    seen = []
    x = noise * (sigmas[0] ** 2 + 1).sqrt()
    sample_tscd(
        den,
        x,
        sigmas,
        eta=eta,
        noise_sampler=seeded_noise_sampler(x, 7),
        schedule=SCHED,
        disable=True,
        callback=lambda d: seen.append(d["denoised"]),
    )
    for stop in range(4):
        with torch.no_grad():
            got = refl_x0(den, noise, 4, stop, eta=eta, spacing="trailing", schedule=SCHED, seed=7)
        torch.testing.assert_close(got, seen[stop], rtol=1e-5, atol=1e-5)


def test_refl_gradient_reaches_lora_only(tiny_unet, embeddings):
    cond, _ = embeddings
    den = student_denoiser(tiny_unet, cond, SCHED)
    x0 = refl_x0(den, torch.randn(2, 1, 8, 8), 4, 3, eta=0.3, schedule=SCHED, seed=0)
    opts = FeedbackOptions(weight=1.0, threshold=10.0)
    loss, logs = feedback_loss(lambda im, p: im.mean(dim=(1, 2, 3)), lambda z: z, x0, ["a", "b"], opts)
    loss.backward()
    grads = {n: p.grad for n, p in tiny_unet.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
    assert logs["reward_above_threshold"] == 0.0
    # r above the threshold: the hinge is flat, no pull
    x0 = refl_x0(den, torch.randn(2, 1, 8, 8), 1, 0, schedule=SCHED)
    loss, _ = feedback_loss(lambda im, p: im.mean(dim=(1, 2, 3)) + 100, lambda z: z, x0, ["a", "b"], opts)
    assert loss.item() == 0.0


def test_data_x0_denoises_real_data(tiny_unet, embeddings):
    cond, _ = embeddings
    den = student_denoiser(tiny_unet, cond, SCHED)
    clean = torch.rand(2, 1, 8, 8) * 2 - 1
    out = data_x0(den, clean, torch.tensor([100, 500]), SCHED, torch.Generator().manual_seed(0))
    assert out.shape == clean.shape and out.requires_grad


def test_a_few_refl_steps_raise_the_reward(tiny_unet, embeddings):
    cond, _ = embeddings
    params = [p for n, p in tiny_unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-2)
    reward = lambda im, p: im.mean(dim=(1, 2, 3))  # noqa: E731  brightness
    opts = FeedbackOptions(weight=1.0, threshold=5.0, steps=[2])
    den = student_denoiser(tiny_unet, cond, SCHED)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def mean_reward():
        with torch.no_grad():
            return reward(refl_x0(den, noise, 2, 1, schedule=SCHED, seed=0), None).mean().item()

    before = mean_reward()
    for _ in range(8):
        loss, _ = feedback_loss(
            reward, lambda z: z, refl_x0(den, noise, 2, 1, schedule=SCHED, seed=0), ["a", "b"], opts
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_reward() > before + 0.05


def test_options_are_checked():
    with pytest.raises(ValueError, match="source"):
        FeedbackOptions(source="coco")
    with pytest.raises(ValueError, match="late_start"):
        FeedbackOptions(late_start=1.0)


@pytest.mark.parametrize("threshold, pulls", [(1e6, True), (-1e6, False)])
def test_feedback_term_uses_per_reward_threshold(tiny_unet, embeddings, threshold, pulls):
    from types import SimpleNamespace

    from hypersd_models.classifier import DigitClassifier
    from train.stages.feedback import FeedbackTerm

    cond, _ = embeddings
    ctx = SimpleNamespace(
        extras={"classifier": DigitClassifier(resolution=8)},
        device="cpu",
        schedule=SCHED,
        prediction_type="epsilon",
        generator=torch.Generator().manual_seed(0),
        base_unet=tiny_unet,
        decode=lambda x, grad=False: x,
    )
    opts = FeedbackOptions(rewards=[{"name": "digits", "threshold": threshold, "weight": 2.0}], weight=0.5, steps=[2])
    batch = SimpleNamespace(
        x0=torch.zeros(2, 1, 8, 8), cond=cond, prompts=["a handwritten digit 3", "handwritten seven"], added_cond=None
    )
    loss, logs = FeedbackTerm(ctx, opts)(batch)
    assert (loss.item() > 0) == pulls
    assert logs["feedback/above_threshold_digits"] == (0.0 if pulls else 1.0)
    if pulls:  # lambda * w * mean(alpha - r)
        assert loss.item() == pytest.approx(0.5 * 2.0 * (threshold - logs["feedback/reward_digits"]), rel=1e-4)
