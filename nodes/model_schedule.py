"""The model's own noise schedule as a hypersd_core VPSchedule, or a clear refusal."""

from ..hypersd_core.schedule import VPSchedule


def vp_schedule(model_sampling) -> VPSchedule:
    """VPSchedule from a ComfyUI ``model_sampling`` object (its sigma table), checked for support.

    Supported: the discrete VP schedules of SD1.5/SDXL-style models with eps, v or x0
    prediction (ComfyUI's wrapper hands the sampler x0 in every case).
    """
    import comfy.model_sampling as ms

    name = type(model_sampling).__name__
    kinds = [c.__name__ for c in type(model_sampling).__mro__]
    if not isinstance(model_sampling, ms.ModelSamplingDiscrete) or isinstance(
        model_sampling, (ms.ModelSamplingDiscreteEDM, ms.StableCascadeSampling)
    ):
        raise ValueError(
            f"Hyper-SD samplers need a discrete-timestep (DDPM) model such as SD1.5 or SDXL; this model "
            f"samples with {name} ({', '.join(kinds[1:3])}), e.g. a flow-matching (SD3/FLUX) or continuous "
            "model. Use ComfyUI's own samplers for it (Hyper-SD3/FLUX LoRAs: KSampler, strength 0.125)."
        )
    if isinstance(model_sampling, ms.IMG_TO_IMG) or not isinstance(model_sampling, ms.EPS):
        raise ValueError(f"Hyper-SD samplers do not support the {kinds[2]} parameterisation of this model")
    sigmas = model_sampling.sigmas
    if len(sigmas) != getattr(model_sampling, "num_timesteps", len(sigmas)):
        raise ValueError(
            f"the model's sigma table has {len(sigmas)} entries instead of {model_sampling.num_timesteps}: it was "
            "patched to a distilled (LCM) schedule. Remove the ModelSamplingDiscrete 'lcm' node before Hyper-SD nodes."
        )
    return VPSchedule.from_sigmas(sigmas)
