"""Peak tensor memory of the DMD and unified stages on a full-size SDXL UNet, counted without a GPU.

The trainer's real ``DMDStage`` / ``UnifiedStage`` (``train/stages/dmd.py``) runs two training
steps on a random-weight SDXL UNet (``hypersd_models.specs.SDXL``) built under torch's
``FakeTensorMode``: every tensor has its true shape, dtype and storage size but no data, and
nothing is computed. A ``TorchDispatchMode`` sees every op's outputs and counts the bytes of each
distinct live storage until Python and autograd release it (weak references on the storages),
so the count includes activations saved for backward, gradients, optimizer state and
temporaries. Reported: the peak per phase of the second step (steady state: AdamW moments exist).

These are tensor bytes counted under fake tensors, NOT a GPU measurement. Fake tensors are on the
CPU (autograd's engine needs a real CUDA device for fake CUDA tensors), with:
- CUDA autocast's float32 policy emulated for the ops of its fp32 list that the UNet uses
  (group_norm, layer_norm, upsampling, mse_loss): CPU autocast keeps them in bf16;
- CPU flash attention (``_scaled_dot_product_flash_attention_for_cpu``), which keeps the same
  tensors for backward as CUDA flash attention (output + fp32 logsumexp); CUDA kernels' own
  workspaces are not counted;
- the LoRA optimizer fused (``train.optim`` makes it fused on CUDA) and the fake-score AdamW
  ``foreach`` (torch's default for CUDA tensors), so their temporaries match CUDA's;
- ``.item()`` of a fake tensor (logged losses) answered with 1, and TSCD's boolean row masks
  (non-boundary rows) taken as selecting every row (an upper bound); the samplers' sigma
  schedules are computed on real tensors.
Settings as in ``train/configs/sdxl-unified.yaml``'s unified stage (real_cfg 7.5, reg_weight 0.25,
so the generator runs on batch + as many bank rows; TSCD k = 1 with EMA), except one fake-score
update and two teacher DDIM steps for the bank per train_step: the peaks repeat per update and
per sampling step.
Not counted: the CUDA context, the caching allocator's rounding and fragmentation, cuDNN/cuBLAS
workspaces, text encoders and VAE (the trainer caches latents and prompt embeddings), the
feedback (reward) term.

    python -m benchmarks.memory_sdxl_dmd --out benchmarks/results/memory_sdxl_dmd.json
    python -m benchmarks.memory_sdxl_dmd --tiny --out /tmp/m.json   # tiny UNet, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hypersd_core.lora_formats import atomic_write_text

NOTE = "tensor bytes counted under fake tensors, not a GPU measurement"
GIB, MIB = 2**30, 2**20


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


_MASK_INDEX_OPS = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default)


def _all_rows(i):
    """A fake 1-D boolean mask has no values: select every row (an upper bound on the memory)."""
    if not (isinstance(i, torch.Tensor) and i.dtype == torch.bool):
        return i
    if i.ndim != 1:
        raise NotImplementedError(f"boolean mask index of shape {tuple(i.shape)} under fake tensors")
    return torch.arange(i.shape[0], device=i.device)


class LiveTensorTracker(TorchDispatchMode):
    """Counts the bytes of every distinct storage created by a dispatched op while it is alive.

    ``track`` registers tensors that existed before the mode was entered. ``phase(name)`` labels
    the ops run inside it; ``peaks[name]`` is the highest live total seen during that phase.
    ``item`` answers ``.item()``-style reads of tensors without data (fake tensors) with a fixed
    number so that code which logs a loss still runs; a 1-D boolean mask index on a fake tensor
    selects every row (its true count is data-dependent; all rows is the upper bound).
    """

    def __init__(self, item: float = 1.0):
        super().__init__()
        self.current = 0
        self.peak = 0
        self.peaks: dict[str, int] = {}
        self.peak_op: dict[str, str] = {}
        self._phases: list[str] = ["setup"]
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.item = item

    # -- accounting -----------------------------------------------------------------------------
    def _release(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[1]

    def _add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key, nbytes = id(st), st.nbytes()
        entry = self._live.get(key)
        if entry is not None and entry[0]() is st:
            if entry[1] != nbytes:  # resized in place
                self.current += nbytes - entry[1]
                self._live[key] = (entry[0], nbytes)
            return
        self._live[key] = (weakref.ref(st, lambda _r, k=key: self._release(k)), nbytes)
        self.current += nbytes

    def track(self, tensors) -> None:
        """Count tensors made before the tracker was entered (each storage once)."""
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                self._add(t)
        self._note("track")

    def _note(self, op: str) -> None:
        name = self._phases[-1]
        if self.current > self.peak:
            self.peak = self.current
        if self.current > self.peaks.get(name, -1):
            self.peaks[name] = self.current
            self.peak_op[name] = op

    def reset_peaks(self) -> None:
        self.peak, self.peaks, self.peak_op = self.current, {}, {}

    @contextlib.contextmanager
    def phase(self, name: str):
        self._phases.append(name)
        self._note("enter")
        try:
            yield
        finally:
            self._phases.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and _is_fake(args[0]):
            t = args[0]
            return (
                bool(self.item)
                if t.dtype == torch.bool
                else (float(self.item) if t.is_floating_point() else int(self.item))
            )
        if func in _MASK_INDEX_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool and _is_fake(i) for i in (args[1] or ())
        ):
            args = (args[0], [_all_rows(i) for i in args[1]], *args[2:])
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        self._note(str(func))
        return out


# CUDA autocast runs these in float32 (ATen's AT_FORALL_FP32 list); CPU autocast keeps bf16.
CUDA_FP32_OPS = ("group_norm", "layer_norm", "interpolate", "mse_loss")


@contextlib.contextmanager
def _wrapped(module, names, wrap):
    """Replace ``module.<name>`` by ``wrap(original)`` for each name; restore on exit."""
    saved = {name: getattr(module, name) for name in names}
    for name, func in saved.items():
        setattr(module, name, wrap(func))
    try:
        yield
    finally:
        for name, func in saved.items():
            setattr(module, name, func)


@contextlib.contextmanager
def cuda_autocast_fp32_policy():
    """Under CPU autocast, run ``torch.nn.functional``'s ops from CUDA autocast's float32 list in
    float32, as CUDA autocast would, so the activations they keep for backward have CUDA's dtype.
    Patched on the module (not a TorchFunctionMode) so that checkpoint recomputation sees it too."""

    def fp32(func):
        def run(*args, **kwargs):
            if not torch.is_autocast_enabled("cpu"):
                return func(*args, **kwargs)

            def up(v):
                return v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.bfloat16, torch.float16) else v

            with torch.autocast("cpu", enabled=False):
                return func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})

        return run

    with _wrapped(F, CUDA_FP32_OPS, fp32):
        yield


@contextlib.contextmanager
def _fake_params_movable():
    """``Module.to`` on fake parameters: torch swaps them with ``torch.utils.swap_tensors``, which
    refuses every fake tensor here (the fake mode holds a weak reference to each); for fake
    tensors, set the parameter's data instead (same dtype/device change, same storage release)."""
    from torch._subclasses.fake_tensor import FakeTensor

    orig = torch.utils.swap_tensors

    def swap(t1, t2):
        if isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor):
            t1.data = t2.data
        else:
            orig(t1, t2)

    torch.utils.swap_tensors = swap
    try:
        yield
    finally:
        torch.utils.swap_tensors = orig


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            total += st.nbytes()
    return total


def _opt_state(opt) -> list[torch.Tensor]:
    inner = getattr(opt, "optimizer", opt)
    return [v for s in inner.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


PHASES = {
    "fake_score": "fake-score updates (generator fwd no_grad + fake fwd/bwd + AdamW)",
    "bank": "reference bank (teacher DDIM, CFG, no_grad)",
    "gen_forward": "generator loss forward (one-step gen with grad, teacher CFG + fake no_grad)",
    "backward_step": "backward + LoRA AdamW step",
    "other": "rest of train_step (unified: the TSCD forwards)",
}


def measure(
    spec_name: str = "sdxl",
    *,
    stage: str = "dmd",
    rank: int = 64,
    gradient_checkpointing: bool = True,
    batch: int = 1,
    resolution: int | None = None,
    steps: int = 2,
    fake_updates: int = 1,
    reg_steps: int = 2,
    emulate_cuda: bool = True,
    sdpa: str = "flash",
) -> dict:
    """Two (``steps``) train_steps of the registered ``stage`` under fake tensors; peak bytes per phase."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from train.lora import is_lora_parameter

    from .train_harness import accelerator
    from hypersd_models.specs import SPECS

    spec = SPECS[spec_name]
    res = resolution or spec.resolution
    acc = accelerator("bf16")  # made outside fake mode: CPU autocast bf16, as mixed_precision: bf16
    t0 = time.perf_counter()
    tracker = LiveTensorTracker()
    policy = cuda_autocast_fp32_policy() if emulate_cuda else contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attention = sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}[sdpa])
    with _fake_params_movable(), attention, FakeTensorMode(allow_non_fake_inputs=True), tracker, policy:
        unet, setup, st, data = build_run(
            spec, stage, acc, rank, gradient_checkpointing, batch, res, fake_updates, reg_steps, emulate_cuda
        )
        ctx = setup.ctx
        if emulate_cuda:  # the fake-score AdamW has no fused flag: torch picks foreach for CUDA tensors
            for g in st.fake_opt.param_groups:
                g["foreach"] = True
        ctx.phase = tracker.phase  # the stage marks its phases (fake_score, bank, gen_forward, backward_step)
        static = {
            "base_weights": _nbytes(
                [p for n, p in unet.named_parameters() if not is_lora_parameter(n)] + list(unet.buffers())
            ),
            "lora_student": _nbytes(setup.lora_params),
            "lora_fake": _nbytes(st.fake_params),
        }
        per_step = []
        for i in range(steps):
            tracker.reset_peaks()
            start = tracker.current
            with tracker.phase("other"):
                st.train_step(data, i)
            per_step.append(
                {
                    "live_before": start,
                    "live_after": tracker.current,
                    "peak": tracker.peak,
                    "phase_peaks": dict(tracker.peaks),
                    "phase_peak_op": dict(tracker.peak_op),
                }
            )
        static["adamw_student"] = _nbytes(_opt_state(ctx.optimizer))
        static["adamw_fake"] = _nbytes(_opt_state(st.fake_opt))
        tscd = getattr(st, "tscd", None)
        static["ema_student"] = _nbytes(tscd.ema.shadow.values()) if tscd is not None and tscd.ema else 0
        static["reference_bank"] = _nbytes(st.bank.values()) if st.bank else 0
        static["batch"] = _nbytes([data.x0, data.cond, *(data.added_cond or {}).values()])
    return {
        "model": spec_name,
        "stage": stage,
        "lora_rank": rank,
        "gradient_checkpointing": gradient_checkpointing,
        "batch": batch,
        "resolution": res,
        "latent": spec.latent_size(res),
        "fake_updates": fake_updates,
        "reg_steps": reg_steps,
        "generator_batch": batch * 2,  # + one bank row per sample (reg_weight > 0)
        "lora_params_per_adapter": setup.lora_param_count,
        "emulate_cuda": emulate_cuda,
        "sdpa": sdpa,
        "static_bytes": static,
        "steps": per_step,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def build_run(spec, stage, acc, rank, gradient_checkpointing, batch, res, fake_updates, reg_steps, fused=False):
    """(unet, context setup, set-up stage, batch): the measured stage on a random ``spec`` UNet in
    bf16; ``fused``: the LoRA AdamW as train.optim makes it on CUDA (for the fake-tensor count)."""
    from hypersd_models.specs import build_unet
    from train.stages import get_stage

    from .train_harness import build_context, random_batch, uncond_fn

    wdt = torch.bfloat16
    unet = build_unet(spec, dtype=wdt)
    setup = build_context(
        unet,
        mixed_precision="bf16",
        weight_dtype=wdt,
        rank=rank,
        gradient_checkpointing=gradient_checkpointing,
        uncond=uncond_fn(spec, res, acc.device, wdt),
    )
    if fused:
        for g in getattr(setup.ctx.optimizer, "optimizer", setup.ctx.optimizer).param_groups:
            g["fused"], g["foreach"] = True, False
    st = get_stage(stage)(setup.ctx, stage_config(stage, fake_updates, reg_steps), 0)
    st.setup()
    return unet, setup, st, random_batch(spec, batch, res, acc.device, wdt)


def stage_config(stage: str, fake_updates: int, reg_steps: int):
    """The measured stage's settings (train/configs/sdxl-unified.yaml's unified stage, reduced)."""
    from train.config import StageConfig

    return StageConfig(
        name=stage,
        segments=1,
        cfg_min=3.0,
        cfg_max=8.0,
        ema_decay=0.95,
        loss="huber",
        consistency_weight=0.2,
        options={
            "dmd": {
                "real_cfg": 7.5,
                "fake_updates": fake_updates,
                "reg_weight": 0.25,
                "reg_steps": reg_steps,
                "reg_pairs": 256,
            }
        },
    )


def measure_cuda(
    spec_name: str = "sdxl",
    *,
    stage: str = "dmd",
    rank: int = 64,
    gradient_checkpointing: bool = True,
    batch: int = 1,
    resolution: int | None = None,
    steps: int = 2,
    fake_updates: int = 1,
    reg_steps: int = 2,
) -> dict:
    """The same train_steps with real tensors on a GPU: ``torch.cuda.max_memory_allocated`` per step,
    the measurement the fake-tensor count stands in for."""
    from hypersd_models.specs import SPECS

    from .train_harness import accelerator

    if not torch.cuda.is_available():
        raise SystemExit("--cuda needs a CUDA GPU")
    spec = SPECS[spec_name]
    res = resolution or spec.resolution
    acc = accelerator("bf16")
    t0 = time.perf_counter()
    _, _, st, data = build_run(spec, stage, acc, rank, gradient_checkpointing, batch, res, fake_updates, reg_steps)
    per_step = []
    for i in range(steps):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        st.train_step(data, i)
        torch.cuda.synchronize()
        per_step.append(
            {
                "live_before": before,
                "live_after": torch.cuda.memory_allocated(),
                "peak": torch.cuda.max_memory_allocated(),
                "reserved_peak": torch.cuda.max_memory_reserved(),
            }
        )
    return {
        "model": spec_name,
        "stage": stage,
        "lora_rank": rank,
        "gradient_checkpointing": gradient_checkpointing,
        "batch": batch,
        "resolution": res,
        "fake_updates": fake_updates,
        "reg_steps": reg_steps,
        "device": torch.cuda.get_device_name(),
        "steps": per_step,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summary_row(r: dict, unit: int = GIB) -> dict:
    """The last step's peaks (AdamW state exists then) in ``unit`` bytes."""
    last = r["steps"][-1]
    p = last["phase_peaks"]
    gen = max(p.get("gen_forward", 0), p.get("backward_step", 0), p.get("other", 0))
    return {
        "batch": r["batch"],
        "stage": r["stage"],
        "rank": r["lora_rank"],
        "gc": r["gradient_checkpointing"],
        "sdpa": r["sdpa"],
        "persistent": last["live_before"] / unit,
        "fake_score": p.get("fake_score", 0) / unit,
        "generator": gen / unit,
        "bank": p.get("bank", 0) / unit,
        "peak": last["peak"] / unit,
        "first_step_peak": r["steps"][0]["peak"] / unit,
    }


def table(rows: list[dict], unit: int = GIB) -> str:
    name = "GiB" if unit == GIB else "MiB"
    head = (
        f"| batch | stage | LoRA rank | grad. ckpt | attention | persistent {name} | fake-score update | "
        "generator step | reference bank | step peak |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {s['batch']} | {s['stage']} | {s['rank']} | {'on' if s['gc'] else 'off'} | {s['sdpa']} | {s['persistent']:.2f} | "
        f"{s['fake_score']:.2f} | {s['generator']:.2f} | {s['bank']:.2f} | {s['peak']:.2f} |\n"
        for s in (summary_row(r, unit) for r in rows)
    )


def markdown(res: dict) -> str:
    from .machine import describe

    r0 = res["runs"][0]
    unit, name = (MIB, "MiB") if res["tiny"] else (GIB, "GiB")
    emulated = (
        "CUDA autocast's float32 policy for group_norm, layer_norm, upsampling and mse_loss emulated"
        if r0["emulate_cuda"]
        else "plain CPU autocast (norms in bf16) and CPU optimizer defaults (no CUDA emulation)"
    )
    lines = [
        f"# Peak memory of the DMD / unified stages, {res['model']} at {r0['resolution']}²: {NOTE}",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {describe(res['machine'])}",
        "",
        f"{name} of live tensors (every distinct storage, counted by `benchmarks/memory_sdxl_dmd.py` under "
        "FakeTensorMode on the CPU) at the peak of each phase of the second train_step of the real "
        "`train/stages/dmd.py` stage. bf16 base weights, fp32 LoRA weights and AdamW moments, "
        f"mixed_precision bf16; {emulated}. 'persistent' = live between steps (base weights, both LoRA "
        "adapters, AdamW moments, EMA, regression bank, batch). Fake-score update = one generator forward "
        "without grad + the fake adapter's denoising loss forward/backward + its AdamW step. Generator step "
        "= the highest of: the generator-loss forward (the one-step generator with grad on batch + as many "
        "bank rows, then the teacher with CFG as one pass on 2 × batch rows and the fake adapter, both without grad), its "
        "backward + LoRA AdamW step, and for unified the TSCD forwards that share that backward. "
        "Reference bank = filling the regression bank (teacher DDIM with CFG, no grad).",
        "",
        table(res["runs"], unit),
        "",
        f"Static bytes ({name}):",
        "",
    ]
    keys = list(r0["static_bytes"])
    lines.append("| batch | stage | rank | gc | " + " | ".join(keys) + " |")
    lines.append("|---" * (len(keys) + 4) + "|")
    for r in res["runs"]:
        lines.append(
            f"| {r['batch']} | {r['stage']} | {r['lora_rank']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            + " | ".join(f"{r['static_bytes'][k] / unit:.3f}" for k in keys)
            + " |"
        )
    lines += ["", "Not counted: " + res["not_counted"], ""]
    return "\n".join(lines)


NOT_COUNTED = (
    "CUDA context (~0.5-1 GiB), caching-allocator rounding and fragmentation, cuDNN/cuBLAS and "
    "flash-attention workspaces, text encoders and VAE (the trainer uses cached latents and "
    "embeddings), the feedback/reward term, DDP buckets (multi-GPU)."
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/memory_sdxl_dmd.json")
    ap.add_argument("--tiny", action="store_true", help="tiny SDXL-shaped UNet at 64 px (seconds; a code-path check)")
    ap.add_argument("--stages", default="dmd,unified")
    ap.add_argument("--ranks", default="64,8")
    ap.add_argument("--gc", default="on,off", help="gradient checkpointing settings: on,off")
    ap.add_argument("--batches", default="1", help="data batch sizes, e.g. 1,2 (the SDXL preset uses 2)")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument(
        "--fake-updates",
        type=int,
        default=1,
        help="per train_step (the presets use 5; every update after the first AdamW step has the same peak)",
    )
    ap.add_argument(
        "--sdpa",
        default="flash",
        choices=("flash", "math"),
        help="attention kernel: flash keeps out + logsumexp for backward (as CUDA flash/mem-efficient "
        "attention); math materialises the attention matrix",
    )
    ap.add_argument("--no-emulate-cuda", action="store_true", help="plain CPU autocast and CPU optimizer defaults")
    ap.add_argument(
        "--cuda",
        action="store_true",
        help="measure on the GPU instead (max_memory_allocated of real tensors): checks the count",
    )
    args = ap.parse_args(argv)
    spec = "sdxl-tiny" if args.tiny else "sdxl"
    if args.cuda:
        return _main_cuda(args, spec, argv)
    runs = []
    grid = [
        (b, s, r, g == "on")
        for b in args.batches.split(",")
        for s in args.stages.split(",")
        for r in args.ranks.split(",")
        for g in args.gc.split(",")
    ]
    for batch, stage, rank, gc in grid:
        runs.append(
            measure(
                spec,
                stage=stage,
                rank=int(rank),
                gradient_checkpointing=gc,
                batch=int(batch),
                resolution=args.resolution,
                fake_updates=args.fake_updates,
                emulate_cuda=not args.no_emulate_cuda,
                sdpa=args.sdpa,
            )
        )
        s = summary_row(runs[-1], MIB if args.tiny else GIB)
        print(
            f"batch {batch} {stage} rank {rank} gc {gc}: peak {s['peak']:.2f} {'MiB' if args.tiny else 'GiB'} "
            f"({runs[-1]['seconds']} s)",
            file=sys.stderr,
        )
    from .machine import machine_info

    res = {
        "note": NOTE,
        "model": spec,
        "tiny": args.tiny,
        "command": "python -m benchmarks.memory_sdxl_dmd " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "not_counted": NOT_COUNTED,
        "phases": PHASES,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(out), json.dumps(res, indent=1))
    atomic_write_text(str(out.with_suffix(".md")), markdown(res))
    print(table(runs, MIB if args.tiny else GIB))
    return 0


def _main_cuda(args, spec: str, argv) -> int:
    from .machine import machine_info

    runs = []
    for b in args.batches.split(","):
        for stage in args.stages.split(","):
            for rank in args.ranks.split(","):
                for gc in args.gc.split(","):
                    try:
                        r = measure_cuda(
                            spec,
                            stage=stage,
                            rank=int(rank),
                            gradient_checkpointing=gc == "on",
                            batch=int(b),
                            resolution=args.resolution,
                            fake_updates=args.fake_updates,
                        )
                    except torch.cuda.OutOfMemoryError as e:
                        r = {
                            "stage": stage,
                            "lora_rank": int(rank),
                            "gradient_checkpointing": gc == "on",
                            "batch": int(b),
                            "error": f"out of memory: {str(e).splitlines()[0]}",
                        }
                    torch.cuda.empty_cache()
                    runs.append(r)
                    print(
                        f"batch {b} {stage} rank {rank} gc {gc}: "
                        + (f"peak {r['steps'][-1]['peak'] / GIB:.2f} GiB" if "steps" in r else r["error"]),
                        file=sys.stderr,
                    )
    res = {
        "note": "measured on a GPU: torch.cuda.max_memory_allocated of the second train_step",
        "model": spec,
        "command": "python -m benchmarks.memory_sdxl_dmd " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(out), json.dumps(res, indent=1))
    rows = [
        "| stage | batch | rank | grad. ckpt | peak allocated, GiB | peak reserved, GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        last = r["steps"][-1] if "steps" in r else None
        rows.append(
            f"| {r['stage']} | {r['batch']} | {r['lora_rank']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            + (f"{last['peak'] / GIB:.2f} | {last['reserved_peak'] / GIB:.2f} |" if last else f"{r['error']} | |")
        )
    atomic_write_text(str(out.with_suffix(".md")), "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
