"""Losses of the Hyper-SD recipe, torch only: consistency (pseudo-Huber / MSE), adversarial
hinge / non-saturating, ReFL reward hinge and DMD2 distribution matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """mean(sqrt((pred-target)^2 + c^2) - c), the consistency-distillation distance."""
    d2 = (pred.float() - target.float()) ** 2
    return (d2 / ((d2 + c * c).sqrt() + c)).mean()  # the same value, without cancellation for d << c


def consistency_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 0.001
) -> torch.Tensor:
    """The consistency distance between student and target: "huber" (pseudo-Huber) or "mse"."""
    if kind == "huber":
        return pseudo_huber(pred, target, huber_c)
    if kind == "mse":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"loss kind must be 'huber' or 'mse', got {kind!r}")


def adversarial_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss: targets are 'real', student predictions 'fake'."""
    if kind == "hinge":
        return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()
    if kind == "nonsaturating":
        return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
    raise ValueError(f"adversarial loss kind must be 'hinge' or 'nonsaturating', got {kind!r}")


def adversarial_g_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator (student) loss against the discriminator."""
    if kind == "hinge":
        return (-logits_fake).mean()
    if kind == "nonsaturating":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"adversarial loss kind must be 'hinge' or 'nonsaturating', got {kind!r}")


def reward_hinge_loss(rewards: torch.Tensor, threshold: float = 2.0, weight: float = 1e-3) -> torch.Tensor:
    """ReFL: weight * mean(ReLU(threshold - r)); rewards above the threshold stop pulling."""
    return weight * F.relu(threshold - rewards.float()).mean()


def dmd_loss(x: torch.Tensor, mu_real: torch.Tensor, mu_fake: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DMD2 distribution matching: grad = (mu_fake - mu_real)/mean|x - mu_real| per sample,
    loss = 0.5*mean((x - stopgrad(x - grad))^2), whose gradient in x is grad/x.numel()
    (the mean reduction DMD2 uses)."""
    xf = x.float()
    dims = list(range(1, x.ndim))
    with torch.no_grad():
        norm = (xf - mu_real.float()).abs().mean(dim=dims, keepdim=True).clamp(min=eps)
        grad = torch.nan_to_num((mu_fake.float() - mu_real.float()) / norm)
        target = xf - grad
    return 0.5 * F.mse_loss(xf, target, reduction="mean")
