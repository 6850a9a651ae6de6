"""SAMPLER nodes: the TSCD/TCD multistep sampler and the DMD one-step sampler."""

from ..hypersd_core.samplers import sample_dmd_onestep, sample_tscd
from .compat import io
from .ksampler import HyperSDKSampler

CFG_NOTE = (
    "Few-step Hyper-SD LoRAs want cfg 1.0 in SamplerCustom (= diffusers guidance_scale 0, one model call per step)."
)


class HyperSDTSCDSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDTSCDSampler",
            display_name="Hyper-SD TSCD Sampler",
            category="HyperSD/sampling",
            description="Trajectory-segmented consistency (TCD-style) sampler for Hyper-SD LoRAs. Pair it with "
            "the Hyper-SD Scheduler in SamplerCustom. " + CFG_NOTE,
            inputs=[
                io.Float.Input(
                    "eta",
                    default=0.3,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Stochasticity gamma: 0 = deterministic (DDIM-like, N-step LoRAs), 1 = fully "
                    "re-noised (LCM-like). Unified 1-step LoRA: 1.0 at 1 step, ~0.3-0.5 at 2-8 steps. "
                    "The per-step noise comes from the seed, so results are reproducible.",
                ),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, eta) -> io.NodeOutput:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be between 0 and 1 (got {eta}); 0.3 is a good start")
        return io.NodeOutput(HyperSDKSampler(sample_tscd, {"eta": float(eta)}, needs_schedule=True))


class HyperSDDMDSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDDMDSampler",
            display_name="Hyper-SD One-Step Sampler",
            category="HyperSD/sampling",
            description="One model call, returns the predicted image: the Hyper-SDXL 1-step UNet (with the "
            "one-step scheduler at t=800) and DMD-style generators (t=999). Starting noise is scaled as in "
            "diffusers even below sigma_max. " + CFG_NOTE,
            inputs=[],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(HyperSDKSampler(sample_dmd_onestep))
