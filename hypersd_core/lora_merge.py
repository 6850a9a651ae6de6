"""Merge a LoRA into a module's weights in place, with an adjustable strength.

Weights are updated with ``copy_`` so they keep their storage: a compiled or CUDA-graph-captured
model reads the new values on its next replay without being captured again.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch

from .lora_formats import LoraFormatError, lora_delta, to_kohya

log = logging.getLogger(__name__)


class LoraMerge:
    """A kohya/peft/diffusers LoRA merged into ``module`` (a diffusers UNet) at ``strength``.

    Original weights are kept on the CPU so any strength can be set exactly, not accumulated.
    Only ``prefix`` keys are applied; text-encoder keys are skipped with a log line.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        strength: float = 1.0,
        prefix: str = "lora_unet_",
        metadata: Mapping[str, str] | None = None,
    ):
        sd = to_kohya(state_dict, metadata)
        by_name = {
            prefix + name.replace(".", "_"): mod
            for name, mod in module.named_modules()
            if isinstance(getattr(mod, "weight", None), torch.Tensor)
        }
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, val in sd.items():
            mod_name, _, kind = key.partition(".")
            groups.setdefault(mod_name, {})[kind] = val
        skipped = sorted(k for k in groups if not k.startswith(prefix))
        if skipped:
            log.info("LoRA: %d non-UNet modules skipped (e.g. %s)", len(skipped), skipped[0])
        missing = sorted(k for k in groups if k.startswith(prefix) and k not in by_name)
        if missing:
            raise LoraFormatError(
                f"{len(missing)} LoRA modules match no module of the model (first: {missing[0]}); "
                "is this LoRA for a different base model (SD1.5 vs SDXL)?"
            )
        self._entries = []
        for name, g in groups.items():
            if name not in by_name:
                continue
            weight = by_name[name].weight
            down, up = g["lora_down.weight"].float(), g["lora_up.weight"].float()
            alpha = float(g["alpha"]) if "alpha" in g else None
            if lora_delta(down, up, alpha).numel() != weight.numel():
                raise LoraFormatError(f"LoRA module {name}: shape does not fit weight {tuple(weight.shape)}")
            self._entries.append((weight, weight.detach().to("cpu", copy=True), down, up, alpha))
        self.strength = None
        self.set_strength(strength)

    def __len__(self) -> int:
        return len(self._entries)

    @torch.no_grad()
    def set_strength(self, strength: float) -> None:
        """Set W = W0 + strength * delta for every LoRA module (exact, from the saved W0)."""
        for weight, orig, down, up, alpha in self._entries:
            delta = lora_delta(down, up, alpha, float(strength)).reshape(orig.shape)
            weight.copy_((orig.float() + delta).to(device=weight.device, dtype=weight.dtype))
        self.strength = float(strength)

    @torch.no_grad()
    def remove(self) -> None:
        """Restore the original weights."""
        for weight, orig, *_ in self._entries:
            weight.copy_(orig.to(device=weight.device, dtype=weight.dtype))
        self.strength = 0.0
