"""Tiny random-weight models and the diffusers reference loop shared by the core tests."""

from __future__ import annotations

import torch

CROSS_DIM = 16
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


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


class VPNet:
    """``net(x_vp, t, cond) -> output``: the UNet, optionally as a near-identity eps model.

    ``residual=True`` returns x + 0.1*unet(x): a random UNet alone predicts eps ~ 0.3*N(0, 1)
    whatever the input, so its x0 at t = 999 reaches |x0| ~ 50, where float32 spacing is 4e-6 and
    an absolute 1e-5 bound measures float32 resolution rather than the algorithm. Tracking the
    input, as a trained eps model does at high t, keeps every x and x0 of order 1.
    Records the timesteps it is called with.
    """

    def __init__(self, unet, residual: bool = False):
        self.unet, self.residual, self.timesteps, self.inputs = unet, residual, [], []

    def __call__(self, x, t, cond):
        self.timesteps.append(torch.as_tensor(t).detach().clone())
        self.inputs.append(x.detach().clone())
        out = self.unet(x, t, encoder_hidden_states=cond).sample
        return x + 0.1 * out if self.residual else out


def diffusers_tcd(net, scheduler, x_vp, cond, eta, seed):
    """Run diffusers' TCDScheduler from VP noise; returns per-step inputs, x0s and the output.

    ``x0`` is pred_original_sample, computed with the expression of TCDScheduler.step (the
    output class does not expose it) from the scheduler's own float32 alphas_cumprod.
    """
    gen = torch.Generator().manual_seed(seed)
    samples, x0s, x = [], [], x_vp
    for t in scheduler.timesteps:
        out = net(x, t, cond)
        ab = scheduler.alphas_cumprod[t]
        if scheduler.config.prediction_type == "epsilon":
            x0 = (x - (1 - ab).sqrt() * out) / ab.sqrt()
        elif scheduler.config.prediction_type == "v_prediction":
            x0 = ab.sqrt() * x - (1 - ab).sqrt() * out
        else:
            x0 = out
        samples.append(x)
        x0s.append(x0)
        x = scheduler.step(out, t, x, eta=eta, generator=gen).prev_sample
    return samples, x0s, x


def diffusers_noise_sampler(shape, seed):
    """Per-step noise exactly as TCDScheduler.step draws it: randn_tensor(shape, generator,
    device, dtype) from a generator seeded the same, called once per non-final step in order."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: randn_tensor(shape, generator=gen, device=torch.device("cpu"), dtype=torch.float32)
