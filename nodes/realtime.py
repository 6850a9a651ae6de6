"""Real-time acceleration: torch.compile with CUDA graphs for a MODEL (and VAE decode), safely.

Each new input signature (resolution, batch, cond/uncond batching, dtype) or LoRA patch state
is a new capture, timed and logged; past ``max_captures`` new ones run eager; a compile error
switches to eager with a warning. On a CPU the node passes its inputs through unchanged.
"""

import copy
import logging

import torch

from ..hypersd_core.capture import GuardedCompile
from .compat import io

log = logging.getLogger(__name__)

MODES = ["reduce-overhead", "max-autotune", "default"]
WRAPPER_KEY = "hypersd.realtime"


def _skip_transformer_options(guard_entries):
    """Guard filter (as ComfyUI's TorchCompileModel): ignore the ever-changing transformer_options."""
    return [("transformer_options" not in entry.name) for entry in guard_entries]


class _GuardedModule(torch.nn.Module):
    """Stands in for ``diffusion_model`` during a call; unknown attributes go to the original."""

    def __init__(self, inner: torch.nn.Module, guard: GuardedCompile, version):
        super().__init__()
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "_version", version)

    def forward(self, *args, **kwargs):
        return self._guard(*args, weights_version=self._version, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_inner"), name)


def _model_wrapper(guard: GuardedCompile):
    def wrapper(executor, *args, **kwargs):
        base = executor.class_obj
        inner = base.diffusion_model
        # ComfyUI re-rolls this id whenever the LoRA patches (or their strengths) change
        version = str(getattr(base, "current_weight_patches_uuid", None))
        base.diffusion_model = _GuardedModule(inner, guard, version)
        try:
            return executor(*args, **kwargs)
        finally:
            base.diffusion_model = inner

    return wrapper


class _DecodeProxy:
    """A VAE's first_stage_model with ``decode`` routed through a GuardedCompile."""

    def __init__(self, inner, guard: GuardedCompile):
        self._inner = inner
        self._guard = guard

    def decode(self, z, **kwargs):
        return self._guard(z) if not kwargs else self._inner.decode(z, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _device_of(model) -> torch.device:
    return torch.device(getattr(model, "load_device", "cpu"))


def apply_realtime(model, vae=None, mode: str = "reduce-overhead", max_captures: int = 4, backend: str = "inductor"):
    """(model, vae, message): compiled copies on CUDA; the inputs unchanged (and why) elsewhere."""
    device = _device_of(model)
    if device.type != "cuda" and backend == "inductor":
        msg = (
            f"Hyper-SD Real-time: the model runs on {device.type}; CUDA graphs need a CUDA GPU, "
            "so MODEL and VAE pass through unchanged"
        )
        log.warning(msg)
        return model, vae, msg
    m = model.clone()
    guard = GuardedCompile(
        m.get_model_object("diffusion_model"),
        "Hyper-SD Real-time UNet",
        mode=mode,
        backend=backend,
        max_captures=max_captures,
        guard_filter_fn=_skip_transformer_options,
    )
    import comfy.patcher_extension

    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, _model_wrapper(guard))
    out_vae = vae
    if vae is not None:
        out_vae = copy.copy(vae)
        inner = vae.first_stage_model
        out_vae.first_stage_model = _DecodeProxy(
            inner,
            GuardedCompile(
                inner.decode, "Hyper-SD Real-time VAE decode", mode=mode, backend=backend, max_captures=max_captures
            ),
        )
    msg = f"Hyper-SD Real-time: compiling on {device} (mode={mode}, up to {max_captures} captured shapes)"
    log.info(msg)
    return m, out_vae, msg


class HyperSDRealtimeCompile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HyperSDRealtimeCompile",
            display_name="Hyper-SD Real-time Compile (CUDA graphs)",
            category="HyperSD/acceleration",
            description="torch.compile with CUDA graphs for the UNet and the VAE decoder, for one-step real-time "
            "generation. Remembers the shapes it captured; a new resolution, batch or LoRA strength is captured "
            "again (up to max_captures, then eager); a compile error falls back to eager. No-op on a CPU.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The model to compile (after any LoRA loaders: a later LoRA "
                    "strength change is captured again automatically).",
                ),
                io.Vae.Input("vae", optional=True, tooltip="Also compile this VAE's decoder (full VAE or TAESD)."),
                io.Combo.Input(
                    "mode",
                    options=MODES,
                    default="reduce-overhead",
                    tooltip="reduce-overhead: CUDA graphs; max-autotune: CUDA graphs + autotuned kernels "
                    "(long compile); default: inductor kernels only.",
                ),
                io.Int.Input(
                    "max_captures",
                    default=4,
                    min=1,
                    max=16,
                    tooltip="Distinct shapes/LoRA states to capture before new ones run eager.",
                ),
            ],
            outputs=[io.Model.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, model, mode, max_captures, vae=None):
        m, v, _ = apply_realtime(model, vae, mode, max_captures)
        return io.NodeOutput(m, v)


NODES = [HyperSDRealtimeCompile]
