"""The stage interface: what every training stage (tscd, feedback, dmd, ...) gets and returns.

The trainer owns models, data, the LoRA optimizer, checkpoints and export; a stage owns its
loss, any extra modules it trains (a discriminator, a fake-score adapter) and their state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hypersd_core.schedule import VPSchedule

from ..batch import Batch  # noqa: F401  (re-exported: stages import it from here)


@dataclass
class StageContext:
    """Everything the trainer hands a stage. ``unet`` is the (possibly DDP-wrapped) student used
    for forwards with gradients; ``base_unet`` the unwrapped module for everything else."""

    config: Any  # TrainConfig
    accelerator: Any
    unet: torch.nn.Module
    base_unet: torch.nn.Module
    schedule: VPSchedule
    prediction_type: str
    lora_params: list[torch.nn.Parameter]
    optimizer: Any  # LoRA optimizer (accelerate-wrapped)
    uncond: Callable[[int], tuple[torch.Tensor, dict | None]]  # batch -> (uncond embeddings, added cond)
    decode: Callable[[torch.Tensor], torch.Tensor]  # model space -> images in [-1, 1]
    teacher: Callable[[], contextlib.AbstractContextManager]  # `with ctx.teacher() as net:` frozen teacher UNet
    generator: torch.Generator  # this process's stage randomness (checkpointed)
    log: Callable[[dict, int], None]
    output_dir: str
    weight_dtype: torch.dtype = torch.float32
    extras: dict = field(default_factory=dict)  # e.g. "classifier" for the embedded model
    encode: Callable[[list[str]], tuple[torch.Tensor, dict | None]] | None = None  # prompts -> (cond, added cond)
    next_batch: Callable[[], Batch] | None = None  # the next training batch (a stage's own extra draws)
    # `with ctx.phase("name"):` marks a part of a step for profilers (memory, time); a no-op by default
    phase: Callable[[str], contextlib.AbstractContextManager] = lambda name: contextlib.nullcontext()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def step_lora(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        """Backward ``loss`` and take one (gradient-accumulated) step of the LoRA optimizer."""
        with self.phase("backward_step"):
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and max_grad_norm:
                self.accelerator.clip_grad_norm_(self.lora_params, max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


class Stage:
    """Base class; subclasses are registered with ``@register_stage("name")``."""

    stage_name = "base"

    def __init__(self, ctx: StageContext, cfg, index: int):
        self.ctx, self.cfg, self.index = ctx, cfg, index

    @classmethod
    def configure_unet(cls, unet: torch.nn.Module, cfg) -> None:
        """Called once per configured stage before the UNet is wrapped for DDP/FSDP: add any
        extra trainable adapters here (parameters added later are not synchronised)."""

    def setup(self) -> None:
        """Build extra modules/optimizers (after the LoRA exists, before a resume loads state)."""

    @property
    def wants_data(self) -> bool:
        """Whether train_step reads a data batch; when False the trainer fetches none and passes None."""
        return True

    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        """One optimizer step (including backward and optimizer steps); returns scalars to log."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors of the stage's own state (EMA, discriminator, its optimizer) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"stage {self.stage_name!r} has no state but the checkpoint holds {len(state)} tensors")

    def sampling_context(self) -> contextlib.AbstractContextManager:
        """Weights to sample grids/metrics with (e.g. the EMA); default: the student as it is."""
        return contextlib.nullcontext()

    def metadata(self) -> dict:
        """HyperSDMetadata fields for the LoRA exported after this stage."""
        kept = self.cfg.keep_segments if self.cfg.keep_fraction > 0 else []
        steps = sorted({self.cfg.segments, *kept})
        return {"segments": self.cfg.segments, "steps": steps, "stage": self.stage_name}
