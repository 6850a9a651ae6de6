"""Discriminator for the adversarial TSCD term: small heads on multi-level features of the frozen
teacher UNet (outputs of its down blocks and mid block), as in PCM / SDXL-Lightning."""

from __future__ import annotations

import torch
import torch.nn as nn


class _Stop(Exception):
    """Ends the UNet forward after the mid block: the up path is not needed for features."""


def teacher_features(
    net, unet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, added_cond: dict | None = None
) -> list[torch.Tensor]:
    """Outputs of every down block and the mid block of ``unet`` when ``net`` (``unet`` itself or
    a wrapper around it, e.g. DDP/FSDP) runs at (x, t, cond)."""
    feats: list[torch.Tensor] = []

    def grab(_m, _inp, out):
        feats.append(out[0] if isinstance(out, tuple) else out)

    def grab_and_stop(m, inp, out):
        grab(m, inp, out)
        raise _Stop

    hooks = [b.register_forward_hook(grab) for b in unet.down_blocks]
    last = unet.mid_block if unet.mid_block is not None else unet.down_blocks[-1]
    if unet.mid_block is not None:
        hooks.append(last.register_forward_hook(grab_and_stop))
    else:
        hooks[-1].remove()
        hooks[-1] = last.register_forward_hook(grab_and_stop)
    try:
        kw = {"added_cond_kwargs": added_cond} if added_cond else {}
        net(x, t, encoder_hidden_states=cond, **kw)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return feats


def feature_channels(unet) -> list[int]:
    ch = list(unet.config.block_out_channels)
    return ch + [ch[-1]] if unet.mid_block is not None else ch


class FeatureDiscriminator(nn.Module):
    """One conv head per feature level; the logit is the mean over levels and positions."""

    def __init__(self, channels: list[int], hidden: int = 64, groups: int = 8):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, hidden, 3, padding=1),
                nn.GroupNorm(min(groups, hidden), hidden),
                nn.SiLU(),
                nn.Conv2d(hidden, 1, 1),
            )
            for c in channels
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature maps, got {len(feats)}")
        dtype = self.heads[0][0].weight.dtype
        logits = [h(f.to(dtype)).flatten(1).mean(1) for h, f in zip(self.heads, feats)]
        return torch.stack(logits, 1).mean(1)
