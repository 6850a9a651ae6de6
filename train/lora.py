"""The student LoRA on a diffusers UNet (peft): adding it, its parameters and state, the EMA copy
used for targets, and running the frozen base model as the teacher."""

from __future__ import annotations

import contextlib

import torch

ADAPTER = "default"


def available_targets(unet: torch.nn.Module, wanted: list[str]) -> list[str]:
    """The entries of ``wanted`` that name at least one Linear/Conv2d module of ``unet``."""
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    found = [w for w in wanted if any(n == w or n.endswith("." + w) for n in names)]
    if not found:
        raise ValueError(
            f"none of lora.target_modules {wanted} exists in the UNet; "
            "use module names such as to_q, to_k, to_v, to_out.0, conv1"
        )
    return found


def add_lora(
    unet: torch.nn.Module, rank: int, alpha: float | None, target_modules: list[str]
) -> list[torch.nn.Parameter]:
    """Freeze the UNet and add a trainable LoRA (lora_B starts at zero: the student starts as the teacher)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        init_lora_weights="gaussian",
        target_modules=available_targets(unet, target_modules),
    )
    unet.add_adapter(config, adapter_name=ADAPTER)
    params = lora_parameters(unet)
    for p in params:
        p.requires_grad_(True)
    return params


def is_lora_parameter(name: str, adapter: str | None = None) -> bool:
    """Whether parameter ``name`` belongs to a peft LoRA (``...lora_A.<adapter>.weight``), of
    ``adapter`` only when given."""
    return "lora_" in name and (adapter is None or f".{adapter}." in name)


def adapter_named_parameters(unet: torch.nn.Module, adapter: str = ADAPTER) -> dict[str, torch.nn.Parameter]:
    """The parameters of LoRA adapter ``adapter`` by name (the student's by default)."""
    return {n: p for n, p in unet.named_parameters() if is_lora_parameter(n, adapter)}


def lora_named_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return adapter_named_parameters(unet, ADAPTER)


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(lora_named_parameters(unet).values())


def lora_tensors(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights by parameter name (the checkpoint format), float32 on CPU."""
    return {n: p.detach().float().cpu().clone() for n, p in lora_named_parameters(unet).items()}


@torch.no_grad()
def load_lora_tensors(unet: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = lora_named_parameters(unet)
    missing, extra = set(params) - set(tensors), set(tensors) - set(params)
    if missing or extra:
        raise ValueError(
            f"LoRA checkpoint does not match the model (missing {len(missing)}, unexpected {len(extra)} "
            "tensors); was it written with another model or lora.rank/target_modules?"
        )
    for n, p in params.items():
        p.copy_(tensors[n].to(p.dtype))


@contextlib.contextmanager
def adapters_disabled(unet: torch.nn.Module):
    """Run the base model (the teacher). peft's disable_adapters freezes the LoRA; the previous
    requires_grad flags are restored on exit, before any backward needs them."""
    flags = {n: p.requires_grad for n, p in unet.named_parameters() if is_lora_parameter(n)}
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
        for n, p in unet.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])


class LoraEMA:
    """EMA of the LoRA weights only; :meth:`swapped_in` runs the UNet with them (no grad)."""

    def __init__(self, unet: torch.nn.Module, decay: float):
        self.unet, self.decay = unet, float(decay)
        self.shadow = {n: p.detach().clone().float() for n, p in lora_named_parameters(unet).items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in lora_named_parameters(self.unet).items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily load the EMA weights into the LoRA (call before the student's forward)."""
        params = lora_named_parameters(self.unet)
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])

    def state_dict(self, prefix: str = "ema.") -> dict[str, torch.Tensor]:
        return {prefix + n: t.cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "ema.") -> None:
        for n in self.shadow:
            if prefix + n not in state:
                raise ValueError(f"checkpoint lacks EMA tensor {prefix + n}")
            self.shadow[n].copy_(state[prefix + n])
