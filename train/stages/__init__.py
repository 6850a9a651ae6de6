"""Training stages, looked up by the ``name`` of each entry under ``stages`` in the config.

A stage module registers its class with :func:`register_stage`; built-in names are imported
on first use, so a stage's optional dependencies load only when a config asks for it.
"""

from __future__ import annotations

import importlib

from .base import Stage, StageContext

from ..config import BUILTIN_STAGES as BUILTIN_MODULES

_REGISTRY: dict[str, type[Stage]] = {}


def register_stage(name: str):
    """Class decorator: make a Stage subclass available under ``name`` in configs."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"stage name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.stage_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_stage(name: str) -> type[Stage]:
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(BUILTIN_MODULES))
        raise KeyError(
            f"unknown stage {name!r}; known stages: {', '.join(known)} "
            "(a plugin registers more with train.stages.register_stage)"
        )
    return _REGISTRY[name]


__all__ = ["Stage", "StageContext", "register_stage", "get_stage"]
