"""Losses: pseudo-Huber, consistency kinds, adversarial, ReFL hinge, DMD2 gradient."""

import math

import pytest
import torch

from hypersd_core.losses import (
    adversarial_d_loss,
    adversarial_g_loss,
    consistency_loss,
    dmd_loss,
    pseudo_huber,
    reward_hinge_loss,
)


def test_pseudo_huber_value_and_limits():
    c = 0.001
    z = torch.zeros(4)
    assert float(pseudo_huber(z, z, c)) == 0.0
    d = torch.tensor([3.0, -4.0])
    assert float(pseudo_huber(d, torch.zeros(2), c)) == pytest.approx(
        ((9 + c * c) ** 0.5 + (16 + c * c) ** 0.5) / 2 - c
    )
    assert float(pseudo_huber(torch.full((3,), 10.0), torch.zeros(3), c)) == pytest.approx(10 - c, rel=1e-6)  # ~|d|
    tiny = 1e-5
    assert float(pseudo_huber(torch.full((3,), tiny), torch.zeros(3), c)) == pytest.approx(
        tiny**2 / (2 * c), rel=1e-3
    )  # ~d^2/2c
    assert (
        pseudo_huber(torch.ones(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    )


def test_consistency_loss_kinds():
    p, t = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.equal(consistency_loss(p, t, "huber", 0.01), pseudo_huber(p, t, 0.01))
    assert torch.allclose(consistency_loss(p, t, "mse"), ((p - t) ** 2).mean())
    with pytest.raises(ValueError, match="'huber' or 'mse'"):
        consistency_loss(p, t, "l1")


def test_adversarial_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert float(adversarial_d_loss(real, fake)) == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert float(adversarial_g_loss(fake)) == pytest.approx(0.75)
    sp = lambda v: math.log1p(math.exp(v))
    assert float(adversarial_d_loss(real, fake, "nonsaturating")) == pytest.approx(
        (sp(-2) + sp(-0.5)) / 2 + (sp(-2) + sp(0.5)) / 2
    )
    assert float(adversarial_g_loss(fake, "nonsaturating")) == pytest.approx((sp(2) + sp(-0.5)) / 2)
    with pytest.raises(ValueError, match="hinge"):
        adversarial_d_loss(real, fake, "wgan")
    with pytest.raises(ValueError, match="hinge"):
        adversarial_g_loss(fake, "wgan")


def test_reward_hinge():
    r = torch.tensor([0.5, 1.0, 3.0], requires_grad=True)
    loss = reward_hinge_loss(r, threshold=2.0, weight=1e-3)
    assert float(loss.detach()) == pytest.approx(1e-3 * (1.5 + 1.0 + 0) / 3)
    loss.backward()
    assert r.grad.tolist() == pytest.approx([-1e-3 / 3, -1e-3 / 3, 0.0])  # above the threshold: no pull


def test_dmd_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    mu_real, mu_fake = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    dmd_loss(x, mu_real, mu_fake).backward()
    norm = (x.detach() - mu_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = (mu_fake - mu_real) / norm / x.numel()
    assert torch.allclose(x.grad, expected, atol=1e-7, rtol=1e-5)
    # mu_real and mu_fake get no gradient even when they require it (stop-gradient target).
    mr, mf = mu_real.clone().requires_grad_(), mu_fake.clone().requires_grad_()
    dmd_loss(x.detach().requires_grad_(), mr, mf).backward()
    assert mr.grad is None and mf.grad is None


def test_dmd_loss_is_finite_when_x_equals_mu_real():
    x = torch.ones(2, 3, requires_grad=True)
    loss = dmd_loss(x, x.detach().clone(), torch.zeros(2, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
