"""An LCM-LoRA distillation step built the way diffusers' example does it
(examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py), for speed comparisons:

student forward+backward at t_{n+k}; teacher cond forward, then a separate uncond forward (two
batch-B passes, not one batch-2B pass); a DDIM step to t_n; target forward of the online student
at t_n (no EMA network); LCM boundary scalings; pseudo-Huber loss. The teacher is a separate
frozen UNet ("copy", as the SD1.5 LoRA script loads it) or the same UNet with the LoRA disabled
("shared", as diffusers' SDXL LoRA script does).

The DDIM step and parameterisation come from hypersd_core; the LCM-only pieces (solver grid of
``num_ddim_timesteps``, c_skip/c_out) are the example's, a few lines each.
"""

from __future__ import annotations

import contextlib

import torch

from hypersd_core.losses import consistency_loss
from hypersd_core.parameterization import add_noise, cfg_combine, jump, per_sample, to_x0_eps


def lcm_boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """LCM's c_skip, c_out at timesteps ``t`` (the example's scalings_for_boundary_conditions)."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


class LCMLoraStep:
    """One optimizer step of LCM-LoRA distillation on a peft-LoRA UNet (see the module docstring)."""

    def __init__(
        self,
        ctx,
        teacher_unet: torch.nn.Module | None = None,
        num_ddim_timesteps: int = 50,
        w_min: float = 3.0,
        w_max: float = 15.0,
        huber_c: float = 0.001,
    ):
        self.ctx, self.teacher_unet = ctx, teacher_unet
        T = ctx.schedule.num_train_timesteps
        self.topk = T // num_ddim_timesteps
        self.ddim_timesteps = torch.arange(1, num_ddim_timesteps + 1) * self.topk - 1
        self.w_min, self.w_max, self.huber_c = w_min, w_max, huber_c

    def _teacher(self):
        if self.teacher_unet is not None:
            return contextlib.nullcontext(self.teacher_unet)
        return self.ctx.teacher()

    def train_step(self, batch, step: int = 0) -> dict[str, float]:
        ctx = self.ctx
        dev, wd, sched, pt = ctx.device, ctx.weight_dtype, ctx.schedule, ctx.prediction_type
        kw = {"added_cond_kwargs": batch.added_cond} if batch.added_cond else {}
        x0 = batch.x0.float()
        n = x0.shape[0]
        index = torch.randint(0, len(self.ddim_timesteps), (n,), generator=ctx.generator)
        start = self.ddim_timesteps[index].to(dev)
        t = (start - self.topk).clamp(min=0)
        a_s, s_s = sched.alpha_sigma(start, device=dev)
        a_t, s_t = sched.alpha_sigma(t, device=dev)
        noise = torch.randn(x0.shape, generator=ctx.generator).to(dev)
        x_s = add_noise(x0, noise, a_s, s_s)
        w = self.w_min + (self.w_max - self.w_min) * torch.rand(n, generator=ctx.generator)
        w = w.to(dev)

        with ctx.accelerator.autocast():
            out = ctx.unet(x_s.to(wd), start, encoder_hidden_states=batch.cond, **kw).sample
            c_skip_s, c_out_s = lcm_boundary_scalings(start)
            pred_x0 = to_x0_eps(out.float(), x_s, a_s, s_s, pt)[0]
            model_pred = per_sample(c_skip_s, x_s) * x_s + per_sample(c_out_s, x_s) * pred_x0
            with torch.no_grad():
                with self._teacher() as teacher:
                    unc, unc_added = ctx.uncond(n)
                    cond_out = teacher(x_s.to(wd), start, encoder_hidden_states=batch.cond, **kw).sample.float()
                    ukw = {"added_cond_kwargs": unc_added} if unc_added else {}
                    uncond_out = teacher(x_s.to(wd), start, encoder_hidden_states=unc, **ukw).sample.float()
                # LCM's guidance x + w (x - x_uncond) is diffusers' scale 1 + w.
                g = cfg_combine(cond_out, uncond_out, per_sample(1.0 + w, cond_out))
                x0_g, eps_g = to_x0_eps(g, x_s, a_s, s_s, pt)
                x_prev = jump(x0_g, eps_g, a_t, s_t)
                target_out = ctx.unet(x_prev.to(wd), t, encoder_hidden_states=batch.cond, **kw).sample.float()
                c_skip, c_out = lcm_boundary_scalings(t)
                target = (
                    per_sample(c_skip, x_prev) * x_prev
                    + per_sample(c_out, x_prev) * to_x0_eps(target_out, x_prev, a_t, s_t, pt)[0]
                )
            loss = consistency_loss(model_pred.float(), target.float(), "huber", self.huber_c)
        ctx.step_lora(loss, ctx.config.optim.max_grad_norm)
        return {"loss": float(loss.detach())}
