"""Checks that run before any model loads: the output folder, a resumed run's config, and the model
files (readable safetensors, and the architecture the config asks for).

Each failure is a :class:`PreflightError` whose message is one line saying what is wrong and what
to do; the CLI prints it and exits with code 2."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from .errors import UserError

# Keys that change how a run is shown or where it runs, not what it trains.
RUNTIME_KEYS = {"output", "progress", "threads", "log_every", "checkpoint_every", "keep_checkpoints"}
FINISHED_MARKERS = ("summary.json", "hypersd_lora.safetensors")


class PreflightError(UserError):
    """The output folder, a resumed run or a model file is not usable as asked."""


def finished(out: Path) -> bool:
    return any((out / name).exists() for name in FINISHED_MARKERS)


def has_checkpoints(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.startswith("step-") for p in root.iterdir())


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to write into a finished or started run unless asked; return where ``--overwrite``
    moved the old run (it is renamed aside, never deleted, so nothing is lost)."""
    if out.exists() and not out.is_dir():
        raise PreflightError(f"--output {out} is a file, not a folder; choose another --output")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if overwrite:
        if not (finished(out) or has_checkpoints(out) or (out / "config.json").is_file()):
            raise PreflightError(
                f"{out} is not a training run's folder (no config.json, checkpoints/ or LoRA); "
                "--overwrite only moves runs aside: choose an empty or new --output"
            )
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = out.with_name(f"{out.name}.replaced-{stamp}")
        out.rename(aside)
        return aside
    if finished(out) and not (resume and has_checkpoints(out)):
        raise PreflightError(
            f"{out} holds a finished run ({', '.join(n for n in FINISHED_MARKERS if (out / n).exists())}); "
            "choose another --output, or pass --overwrite to move it aside and train again"
        )
    if not resume and has_checkpoints(out):
        raise PreflightError(
            f"{out} holds a started run (checkpoints/): pass --resume to continue it, "
            "--overwrite to move it aside, or choose another --output"
        )
    return None


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        out[f"{prefix}len"] = len(d)
    else:
        out[prefix[:-1]] = list(d) if isinstance(d, tuple) else d
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted keys whose values differ between a run's recorded config and the new one."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys if k.split(".")[0] not in RUNTIME_KEYS and a.get(k) != b.get(k)}


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _recorded_config(path: Path) -> tuple[dict | None, str | None]:
    """The run's config.json, or None and what is wrong with it (unreadable, not a JSON object)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({e.__class__.__name__})"
    if not isinstance(old, dict):
        return None, f"not a training config (a JSON {_JSON_TYPES.get(type(old), type(old).__name__)}, not an object)"
    return old, None


def _with_defaults(old: dict) -> tuple[dict, str | None]:
    """A recorded config with the keys added since it was written set to their defaults (which
    change nothing), so only real changes count. When this version cannot read or run it (a key
    or stage it no longer has, a value of the wrong type), it comes back as recorded, with why."""
    from .config import ConfigError, TrainConfig, config_problems, from_dict

    try:
        cfg = from_dict(TrainConfig, old)
        problems = config_problems(cfg)
    except (ConfigError, TypeError, ValueError, AttributeError, KeyError) as e:
        return old, _short(e)
    return cfg.to_dict(), (_short(problems[0]) if problems else None)


def check_resume_config(out: Path, new: dict, allow: bool) -> dict[str, tuple]:
    """On --resume, compare with the run's config.json; refuse a change unless ``allow``. A damaged
    config.json is refused too unless ``allow``, which resumes with the new config (recorded)."""
    path = out / "config.json"
    if not path.is_file():
        return {}
    old, damaged = _recorded_config(path)
    if old is None:
        if not allow:
            raise PreflightError(
                f"{path} (the run's recorded config) is {damaged}; restore it, or pass "
                "--allow-config-change to resume with the config given now (it is recorded in the run)"
            )
        return {"config.json": (damaged, "replaced by the config given now")}
    old, unusable = _with_defaults(old)
    changes = config_changes(old, new)
    if changes and not allow:
        shown = 4 if unusable else 8
        listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(changes.items())[:shown])
        more = f" (+{len(changes) - shown} more)" if len(changes) > shown else ""
        if unusable:
            raise PreflightError(
                f"{path} (the run's recorded config) cannot be run by this version ({unusable}); pass "
                "--allow-config-change to resume with the config given now (it is recorded in the run). "
                f"The changed training config: {listed}{more}"
            )
        raise PreflightError(
            f"--resume with a changed training config ({listed}{more}); resume with the run's own config "
            f"(--config {path}), or pass --allow-config-change to accept the change (it is recorded in the run)"
        )
    return changes


def record_config_change(out: Path, changes: dict) -> None:
    """Append an accepted config change to ``config_changes.jsonl`` in the run folder."""
    from hypersd_core.lora_formats import atomic_write_text

    path = out / "config_changes.jsonl"
    line = json.dumps(
        {
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "changes": {k: list(v) for k, v in changes.items()},
        },
        default=str,
    )
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, old + line + "\n")


# -- model files -------------------------------------------------------------------------------
def _arch_from_unet_config(cfg: dict) -> str | None:
    if cfg.get("addition_embed_type") == "text_time" or cfg.get("cross_attention_dim") == 2048:
        return "sdxl"
    if cfg.get("cross_attention_dim") == 768:
        return "sd15"
    if cfg.get("cross_attention_dim") == 1024:
        return "sd2"
    return None


def _arch_from_checkpoint_keys(keys) -> str | None:
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    return None


def detect_architecture(path: Path) -> str | None:
    """``sd15`` / ``sdxl`` / ``sd2`` from a diffusers folder's UNet config or a checkpoint's keys
    (header only); None when it cannot tell. Raises PreflightError for unreadable files."""
    from hypersd_core.safetensors_check import SafetensorsFileError, inspect_safetensors

    try:
        if path.is_file():
            if path.suffix != ".safetensors":
                raise PreflightError(
                    f"{path}: only .safetensors checkpoints are loaded (a pickled .ckpt/.bin "
                    "runs code when loaded); convert it or get the safetensors release"
                )
            return _arch_from_checkpoint_keys(inspect_safetensors(path)["tensors"])
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            for f in sorted(sub.glob("*.safetensors")):
                inspect_safetensors(f)
    except SafetensorsFileError as e:
        raise PreflightError(str(e)) from None
    unet_cfg = path / "unet" / "config.json"
    if not unet_cfg.is_file():
        return None
    try:
        cfg = json.loads(unet_cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PreflightError(f"{unet_cfg}: not valid JSON; the model folder is damaged") from None
    arch = _arch_from_unet_config(cfg)
    if arch == "sd15" and (path / "text_encoder_2").is_dir():
        arch = "sdxl"
    return arch


def check_model_files(model_cfg) -> str | None:
    """Refuse unreadable model files and a model of another architecture than ``model.kind``."""
    if model_cfg.kind not in ("sd15", "sdxl", "folder") or not model_cfg.path:
        return None
    path = Path(model_cfg.path)
    arch = detect_architecture(path)
    if arch == "sd2":
        raise PreflightError(f"{path} is a Stable Diffusion 2.x model; Hyper-SD training supports SD1.5 and SDXL")
    if arch and model_cfg.kind in ("sd15", "sdxl") and arch != model_cfg.kind:
        names = {"sd15": "SD1.5", "sdxl": "SDXL"}
        raise PreflightError(
            f"model.kind={model_cfg.kind} (--preset {model_cfg.kind}) but {path} holds an {names[arch]} "
            f"model; use --preset {arch} (or model.kind={arch})"
        )
    return arch
