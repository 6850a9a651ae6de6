"""SIGMAS nodes: Hyper-SD timestep selections on the model's own noise schedule."""

from ..hypersd_core.samplers import TIMESTEP_SPACINGS, get_sigmas_onestep, get_sigmas_tscd
from .compat import io
from .model_schedule import onestep_timestep, vp_schedule

MODEL_TOOLTIP = "The (LoRA-patched) model; its own noise schedule is used. SD1.5/SDXL-style (discrete) models only."


class HyperSDScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDScheduler",
            display_name="Hyper-SD Scheduler",
            category="HyperSD/sampling",
            description="Sigmas for the Hyper-SD TSCD sampler. trailing: 4 steps = t 999/749/499/249 (N-step "
            "LoRAs); tcd: 4 steps = 999/759/499/259 (diffusers TCDScheduler, the unified 1-step LoRA).",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                io.Int.Input(
                    "steps",
                    default=4,
                    min=1,
                    max=50,
                    tooltip="Sampling steps (model calls). Hyper-SD LoRAs: the steps they were made for; "
                    "the unified 1-step LoRA: 1-8. At 1 step (denoise 1) a LoRA whose header names a "
                    "one-step timestep (ours from the dmd/unified stages: 800) is sampled at it.",
                ),
                io.Combo.Input(
                    "spacing",
                    options=list(TIMESTEP_SPACINGS),
                    default="trailing",
                    tooltip="Timestep selection: 'trailing' (DDIM trailing, N-step LoRAs and TSCD "
                    "segment starts) or 'tcd' (what diffusers' TCDScheduler picks, 50 original steps).",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="1.0 for text-to-image; below 1 for img2img (starts part-way down the "
                    "schedule: lower keeps more of the input image).",
                ),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps, spacing, denoise) -> io.NodeOutput:
        schedule = vp_schedule(model.get_model_object("model_sampling"))
        return io.NodeOutput(
            get_sigmas_tscd(
                int(steps), schedule, spacing=spacing, denoise=float(denoise), onestep_timestep=onestep_timestep(model)
            )
        )


class HyperSDOneStepScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDOneStepScheduler",
            display_name="Hyper-SD One-Step Scheduler",
            category="HyperSD/sampling",
            description="Sigmas [sigma(t), 0] for one step at timestep t: 800 for the Hyper-SDXL 1-step UNet, "
            "999 for the unified 1-step LoRA and DMD generators.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                io.Int.Input(
                    "timestep",
                    default=999,
                    min=1,
                    max=999,
                    tooltip="The timestep of the single step: 800 for Hyper-SDXL-1step-Unet, 999 for "
                    "the unified 1-step LoRA; lower values with an input image give img2img.",
                ),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, timestep) -> io.NodeOutput:
        schedule = vp_schedule(model.get_model_object("model_sampling"))
        return io.NodeOutput(get_sigmas_onestep(int(timestep), schedule))
