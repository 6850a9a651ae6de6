"""Checkpoints, written to a temp folder and renamed, so a run killed at any moment leaves the
previous checkpoint intact. A checkpoint folder holds:

- ``accelerate/``: ``Accelerator.save_state``: the LoRA optimizer (DDP: one copy; FSDP / DeepSpeed:
  one shard per process) and every process's RNG states (read back with ``weights_only`` loading);
- ``lora``, ``stage`` (EMA, discriminator...), ``rank<i>`` (that process's data position, stage
  generator and, under ZeroRedundancyOptimizer, its optimizer shard): safetensors + JSON;
- ``state.json``, written last."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from hypersd_core.lora_formats import atomic_write, atomic_write_text

ACCELERATE_DIR = "accelerate"
_PY = "@py"  # suffix of optimizer entries that were Python numbers


def optimizer_tensors(optimizer, prefix: str = "opt.") -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat tensors (param_groups come from the config)."""
    sd = optimizer.state_dict()
    out = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"{prefix}{pid}.{k}"] = v.detach().cpu().clone()
            elif isinstance(v, (int, float)):
                out[f"{prefix}{pid}.{k}{_PY}"] = torch.tensor(float(v), dtype=torch.float64)
            else:
                raise TypeError(f"cannot checkpoint optimizer state {k}={type(v).__name__}")
    return out


def load_optimizer_tensors(optimizer, tensors: dict[str, torch.Tensor], prefix: str = "opt.") -> None:
    sd = optimizer.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        if not key.startswith(prefix):
            continue
        pid, name = key[len(prefix) :].split(".", 1)
        if name.endswith(_PY):
            name, v = name[: -len(_PY)], float(v)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    optimizer.load_state_dict(sd)


def _zero(optimizer):
    """The ZeroRedundancyOptimizer inside an (accelerate-wrapped) optimizer, or None."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, ZeroRedundancyOptimizer) else None


def zero_shard_tensors(optimizer) -> dict[str, torch.Tensor]:
    """This process's optimizer shard under ZeroRedundancyOptimizer (empty otherwise): the state of
    the parameters this process owns, saved in its own checkpoint part."""
    zero = _zero(optimizer)
    return {} if zero is None else optimizer_tensors(zero.optim, "opt_shard.")


def load_zero_shard(optimizer, tensors: dict[str, torch.Tensor]) -> None:
    zero = _zero(optimizer)
    if zero is not None:
        load_optimizer_tensors(zero.optim, tensors, "opt_shard.")


# -- folders -----------------------------------------------------------------------------------
def checkpoint_root(output: str | os.PathLike) -> Path:
    return Path(output) / "checkpoints"


def _steps(root: Path) -> list[Path]:
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def verify_checkpoint(folder: Path) -> str | None:
    """None when every file of ``folder`` is whole; else one line naming the first damaged file.

    Reads headers and zip directories (CRC-checked), never unpickles: safetensors parts by their
    header, accelerate's torch.save files with ``zipfile``, JSON by parsing."""
    import zipfile

    from hypersd_core.safetensors_check import SafetensorsFileError, inspect_safetensors

    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if f.suffix == ".safetensors":
                inspect_safetensors(f)
            elif f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
            elif zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                if bad is not None:
                    return f"{f}: member {bad} is corrupt"
            elif f.stat().st_size == 0:
                return f"{f}: empty"
            elif f.suffix in (".bin", ".pt", ".pkl"):
                return f"{f}: not a complete torch.save archive (cut short?)"
        except SafetensorsFileError as e:
            return str(e)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile) as e:
            return f"{f}: {e.__class__.__name__}: {e}"
    return None


def latest_checkpoint(output: str | os.PathLike, verify: bool = False, report=None) -> Path | None:
    """The newest complete checkpoint folder (named step-<global step>), or None.

    ``verify``: skip damaged ones (a truncated file, a half-written archive), calling
    ``report(line)`` for each, so a resume falls back to the newest intact checkpoint."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return None
    for p in _steps(root):
        problem = verify_checkpoint(p) if verify else None
        if problem is None:
            return p
        if report is not None:
            report(f"checkpoint {p.name} is damaged ({problem}); trying the one before it")
    return None


def remove_partial_files(output: str | os.PathLike) -> list[Path]:
    """Delete what a killed run left half-written: ``.tmp-*`` files and folders of atomic writes and
    unfinished checkpoints (never a committed file). Returns what was removed."""
    out = Path(output)
    gone = []
    for folder in (out, out / "lora", checkpoint_root(out)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                gone.append(p)
    return gone


def begin(output, global_step: int) -> Path:
    """A fresh temp folder for the checkpoint of ``global_step`` (main process)."""
    tmp = checkpoint_root(output) / f".tmp-step-{global_step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_part(folder: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """One part: <name>.safetensors (+ <name>.json)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(str(folder / f"{name}.safetensors"), lambda tmp: save_file(tensors, tmp))
    if meta is not None:
        atomic_write_text(str(folder / f"{name}.json"), json.dumps(meta))


def read_part(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors.torch import load_file

    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {folder} lacks {path.name}; it is incomplete or from a run with another number of processes"
        )
    meta_path = folder / f"{name}.json"
    return load_file(str(path)), (json.loads(meta_path.read_text()) if meta_path.is_file() else None)


def commit(tmp: Path, state: dict, keep: int) -> Path:
    """Write state.json last, rename the temp folder into place, drop old checkpoints."""
    atomic_write_text(str(tmp / "state.json"), json.dumps(state, indent=2))
    final = tmp.parent / tmp.name.replace(".tmp-", "")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    olds = sorted(
        (p for p in tmp.parent.iterdir() if p.is_dir() and p.name.startswith("step-")),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for p in olds[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return final
