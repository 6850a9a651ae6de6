"""Tiny random-weight models and diffusers reference loops shared by the core tests."""

from __future__ import annotations

import torch

LATENT_SHAPE = (2, 4, 8, 8)
CROSS_DIM = 16


def tiny_unet(seed: int = 0, cross_attention_dim: int = CROSS_DIM):
    """A randomly initialised diffusers UNet2DConditionModel small enough for CPU tests."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
    )
    return unet.eval().requires_grad_(False)


class UNetNet:
    """``net(x_vp, t) -> model output`` for DiscreteVPDenoiser, recording the timesteps it sees."""

    def __init__(self, unet, encoder_hidden_states):
        self.unet, self.ehs, self.timesteps = unet, encoder_hidden_states, []

    def __call__(self, x, t):
        self.timesteps.append(t.detach().clone())
        return self.unet(x, t, encoder_hidden_states=self.ehs).sample
