"""Shape-guarded compilation: call a module through ``torch.compile`` (CUDA graphs with the
"reduce-overhead" mode) while remembering every input signature it captured.

A signature is the shapes, dtypes and devices of the tensor arguments. A new signature is a
capture, timed and logged; beyond ``max_captures`` new signatures run eager, and a compile error
switches the module to eager for good, both with a log line. A change of the caller-supplied
weights version (e.g. ComfyUI's LoRA patch id) drops all captures: the shapes are captured
again with the new weights. Outputs of CUDA-graph replays are cloned,
because the next replay overwrites them and multistep samplers keep earlier outputs.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import torch

log = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def tensor_signature(obj: Any) -> tuple:
    """Shapes/dtypes/devices of the tensors in nested args (dict keys sorted, other values ignored)."""
    if isinstance(obj, torch.Tensor):
        return (tuple(obj.shape), str(obj.dtype), str(obj.device))
    if isinstance(obj, (list, tuple)):
        return tuple(tensor_signature(o) for o in obj)
    if isinstance(obj, dict):
        return tuple((k, tensor_signature(obj[k])) for k in sorted(obj, key=str))
    return ()


def compile_options(mode: Optional[str], backend: str, guard_filter_fn: Optional[Callable] = None) -> dict:
    """torch.compile kwargs; the mode goes in as inductor options so a guard filter can ride along."""
    opts: dict = {}
    if backend == "inductor" and mode:
        from torch._inductor import list_mode_options

        opts.update(list_mode_options(mode))
    if guard_filter_fn is not None:
        opts["guard_filter_fn"] = guard_filter_fn
    return {"backend": backend, "options": opts or None}


class GuardedCompile:
    """``module`` called through torch.compile, at most ``max_captures`` signatures, else eager."""

    def __init__(
        self,
        module: Callable,
        name: str = "model",
        mode: Optional[str] = "reduce-overhead",
        backend: str = "inductor",
        max_captures: int = 4,
        dynamic: bool = False,
        fullgraph: bool = False,
        guard_filter_fn: Optional[Callable] = None,
    ):
        self.module = module
        self.name = name
        self.max_captures = max_captures
        self.cudagraphs = backend == "inductor" and mode in CUDA_GRAPH_MODES
        self.compiled = torch.compile(
            module, dynamic=dynamic, fullgraph=fullgraph, **compile_options(mode, backend, guard_filter_fn)
        )
        self.captures: dict[tuple, float] = {}  # signature -> seconds its first call took
        self.failed: Optional[str] = None
        self.eager_calls = 0
        self.recaptures = 0
        self.weights_version: Any = None
        self._warned_limit = False

    def __call__(self, *args, weights_version: Any = None, **kwargs):
        if weights_version != self.weights_version:
            if self.captures:
                log.info("%s: weights changed (LoRA/patches); re-capturing", self.name)
                self.recaptures += 1
            self.captures.clear()
            self._warned_limit = False
            self.weights_version = weights_version
        sig = (tensor_signature(args), tensor_signature(kwargs))
        new = sig not in self.captures
        if self.failed or (new and len(self.captures) >= self.max_captures):
            if not self.failed and not self._warned_limit:
                log.warning(
                    "%s: %d shapes captured already (limit %d); new ones run eager",
                    self.name,
                    len(self.captures),
                    self.max_captures,
                )
                self._warned_limit = True
            self.eager_calls += 1
            return self.module(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            with strict_compile_errors():
                out = self.compiled(*args, **kwargs)
        except Exception as exc:  # compile errors surface on the first call of a signature
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("%s: torch.compile failed (%s); running eager from now on", self.name, self.failed)
            self.eager_calls += 1
            return self.module(*args, **kwargs)
        if self.cudagraphs:
            out = _clone(out)
        if new:
            self.captures[sig] = time.perf_counter() - t0
            log.info(
                "%s: captured %s in %.2f s (%d/%d)",
                self.name,
                sig,
                self.captures[sig],
                len(self.captures),
                self.max_captures,
            )
        return out


def strict_compile_errors():
    """Let compile errors reach our fallback even where another import (k-diffusion does) set
    dynamo's ``suppress_errors``, which would otherwise hide them behind a silent eager run."""
    import torch._dynamo

    return torch._dynamo.config.patch(suppress_errors=False)


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    return out
