"""Several LoRA adapters on one base UNet (peft): switch which one runs without letting peft's
requires_grad bookkeeping change what is being trained.

peft's ``set_adapter`` marks the active adapter trainable and others frozen, and
``disable_adapters`` freezes every adapter; a parameter frozen between forward and backward
silently gets no gradient. :func:`use_adapter` switches, then restores the caller's trainable set.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch

from ..lora import adapter_named_parameters, is_lora_parameter


def adapter_parameters(unet: torch.nn.Module, name: str) -> list[torch.nn.Parameter]:
    """The LoRA parameters of adapter ``name`` (peft names them ``...lora_A.<name>.weight``)."""
    params = list(adapter_named_parameters(unet, name).values())
    if not params:
        raise ValueError(f"the UNet has no LoRA adapter named {name!r}")
    return params


def use_adapter(unet: torch.nn.Module, name: str | None, trainable: Iterable[torch.nn.Parameter] = ()) -> None:
    """Run adapter ``name`` (None: the base model alone); exactly ``trainable`` LoRA params train."""
    if name is None:
        unet.disable_adapters()
    else:
        unet.enable_adapters()
        unet.set_adapter(name)
    keep = {id(p) for p in trainable}
    for n, p in unet.named_parameters():
        if is_lora_parameter(n):
            p.requires_grad_(id(p) in keep)


def add_zero_adapter(
    unet: torch.nn.Module,
    name: str,
    like: str | None = None,
    rank: int = 8,
    target_modules: Iterable[str] | None = None,
) -> list[torch.nn.Parameter]:
    """Add adapter ``name`` shaped like adapter ``like`` (or with ``rank``/``target_modules``);
    peft initialises lora_B to zero, so it starts as the base model. Returns its parameters and
    keeps the previously active adapter active."""
    from peft import LoraConfig

    if like is not None:
        cfg = unet.peft_config[like]
        config = LoraConfig(
            r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules, init_lora_weights=True
        )
    else:
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights=True,
            target_modules=list(target_modules or ["to_q", "to_k", "to_v", "to_out.0"]),
        )
    active = list(unet.active_adapters()) if getattr(unet, "_hf_peft_config_loaded", False) else []
    with warnings.catch_warnings():  # peft warns that a second adapter is being added: intended here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(config, adapter_name=name)
    if active:
        unet.set_adapter(active[0] if len(active) == 1 else active)
    return adapter_parameters(unet, name)
