"""ComfyUI KSAMPLER for the hypersd_core samplers, with the starting-noise correction.

ComfyUI scales the starting noise by sqrt(1+sigma^2) only when sampling starts at sigma_max,
and by sigma below it. Few-step models expect what diffusers feeds them: unit-variance VP noise
at the start timestep. So a txt2img run (empty latent) that starts below sigma_max asks the core
sampler to rescale (``rescale_start``); img2img (a real latent) is left as ComfyUI noised it.
"""

import functools

import comfy.samplers
import torch

from .model_schedule import vp_schedule


class HyperSDKSampler(comfy.samplers.KSAMPLER):
    """KSAMPLER that passes ``rescale_start`` and, if asked, the model's own VPSchedule."""

    def __init__(self, sampler_function, extra_options=None, needs_schedule=False):
        super().__init__(sampler_function, dict(extra_options or {}))
        self.needs_schedule = needs_schedule

    def sample(
        self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False
    ):
        schedule = vp_schedule(model_wrap.inner_model.model_sampling)  # also refuses unsupported models
        options = {"rescale_start": starts_from_pure_noise(latent_image) and not self.max_denoise(model_wrap, sigmas)}
        if self.needs_schedule:
            options["schedule"] = schedule
        run = comfy.samplers.KSAMPLER(
            functools.partial(self.sampler_function, **options), self.extra_options, self.inpaint_options
        )
        return run.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)


def starts_from_pure_noise(latent_image) -> bool:
    """True for txt2img: no latent, or ComfyUI's all-zero empty latent."""
    return latent_image is None or torch.count_nonzero(latent_image) == 0
