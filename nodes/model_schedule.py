"""The model's own noise schedule as a hypersd_core VPSchedule, or a clear refusal."""

from ..hypersd_core.schedule import VPSchedule

# model_options key: the one-step timestep of the Hyper-SD LoRA patched into a MODEL (from its header)
ONESTEP_OPTION = "hypersd_onestep_timestep"


def onestep_timestep(model) -> int | None:
    """The one-step timestep HyperSDLoraLoader recorded on ``model``, or None."""
    return getattr(model, "model_options", {}).get(ONESTEP_OPTION)


def vp_schedule(model_sampling) -> VPSchedule:
    """VPSchedule from a ComfyUI ``model_sampling`` object (its sigma table), checked for support.

    Supported: the discrete VP schedules of SD1.5/SDXL-style models with eps, v or x0
    prediction (ComfyUI's wrapper hands the sampler x0 in every case).
    """
    import comfy.model_sampling as ms
    import torch

    # ComfyUI mixes a sampling class (an nn.Module) with a prediction class, both from comfy.model_sampling.
    bases = [c for c in type(model_sampling).__mro__ if c.__module__ == ms.__name__]
    sampling = next((c.__name__ for c in bases if issubclass(c, torch.nn.Module)), type(model_sampling).__name__)
    prediction = next((c.__name__ for c in bases if not issubclass(c, torch.nn.Module)), "unknown")
    if not isinstance(model_sampling, ms.ModelSamplingDiscrete) or isinstance(
        model_sampling, (ms.ModelSamplingDiscreteEDM, ms.StableCascadeSampling)
    ):
        if isinstance(model_sampling, (ms.ModelSamplingDiscreteFlow, ms.ModelSamplingFlux)):
            raise ValueError(
                f"this is a flow-matching model ({sampling}: SD3/FLUX.1-style); the Hyper-SD samplers and schedulers "
                "serve DDPM models (SD1.5/SDXL). Sample it with ComfyUI's KSampler (sampler euler; scheduler simple "
                "for FLUX.1, sgm_uniform for SD3), with the Hyper-SD LoRA Loader's 'settings' for steps and cfg."
            )
        raise ValueError(
            f"Hyper-SD samplers need a discrete-timestep (DDPM) model such as SD1.5 or SDXL; this model uses "
            f"{sampling} with {prediction} prediction (a continuous-time one). Use ComfyUI's own samplers for it."
        )
    if isinstance(model_sampling, ms.IMG_TO_IMG) or not isinstance(model_sampling, ms.EPS):
        raise ValueError(f"Hyper-SD samplers support eps, v and x0 prediction; this model uses {prediction}")
    sigmas = model_sampling.sigmas
    if len(sigmas) != getattr(model_sampling, "num_timesteps", len(sigmas)):
        raise ValueError(
            f"the model's sigma table has {len(sigmas)} entries instead of {model_sampling.num_timesteps}: it was "
            "patched to a distilled (LCM) schedule. Remove the ModelSamplingDiscrete 'lcm' node before Hyper-SD nodes."
        )
    return VPSchedule.from_sigmas(sigmas)
