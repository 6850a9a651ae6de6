"""Typed training configuration: dataclass defaults, overlaid by a preset file
(train/configs/<name>.yaml), a user file and ``--set a.b=value`` overrides, in that order."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(UserError, ValueError):
    """A configuration value or file we cannot use; the message says what to change."""


# Built-in stage names and the modules that register them (train.stages imports them on first use).
BUILTIN_STAGES = {
    "tscd": "train.stages.tscd",
    "feedback": "train.stages.feedback",
    "dmd": "train.stages.dmd",
    "unified": "train.stages.dmd",
}
MODEL_KINDS = ("embedded", "tiny", "sd15", "sdxl", "folder")
DATA_KINDS = ("digits", "folder", "webdataset", "hf")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# diffusers.optimization.get_scheduler names (train/optim.py builds them)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # accelerate trackers (train/tracking.py)


@dataclass
class ModelConfig:
    kind: str = "embedded"  # embedded | sd15 | sdxl | folder (any diffusers UNet2DConditionModel pipeline) | tiny
    path: str | None = None  # diffusers folder (from_pretrained) or single .safetensors checkpoint
    teacher_path: str | None = None  # separate teacher UNet; None: the base UNet with the LoRA disabled
    tokenizer_path: str | None = None
    config_path: str | None = None  # local diffusers folder with the configs from_single_file needs offline
    prediction_type: str | None = None  # None: from the scheduler config / model kind
    dtype: str = "fp32"  # dtype of the frozen weights: fp32 | fp16 | bf16
    gradient_checkpointing: bool = False
    tiny: dict = field(default_factory=dict)  # config overrides for kind=tiny (tests)


@dataclass
class DataConfig:
    kind: str = (
        "digits"  # digits | folder | webdataset | hf (local Hugging Face dataset: save_to_disk, parquet, imagefolder)
    )
    path: str | None = None  # folder, or a shard pattern / list file for webdataset ("data-{000..009}.tar")
    captions: str | None = None  # jsonl/csv file for kind=folder; default: captions.jsonl/.csv or same-stem .txt
    resolution: int | None = None  # None: the model's native resolution
    batch_size: int = 64  # per process
    cache_dir: str | None = None  # precomputed latents + text embeddings (folder/webdataset)
    max_bad_fraction: float = 0.5  # fail when more than this share of samples cannot be read
    center_crop: bool = True
    random_flip: bool = False
    num_workers: int = 0  # DataLoader worker processes decoding, cropping and captioning per training process
    prefetch_factor: int = 2  # batches each worker prepares ahead
    pin_memory: bool = True  # page-locked batches on CUDA
    streaming: bool = False  # webdataset: stream shards (shard shuffle per epoch and process) instead of listing them
    buckets: bool = False  # aspect-ratio buckets (about resolution² pixels, sides multiples of bucket_step)
    bucket_step: int = 64
    image_column: str = "image"  # kind=hf
    caption_column: str | None = None  # kind=hf; None: text / caption / prompt


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float | None = None  # None: = rank
    target_modules: list[str] = field(
        default_factory=lambda: [
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "proj_in",
            "proj_out",
            "ff.net.0.proj",
            "ff.net.2",
            "conv1",
            "conv2",
            "conv_shortcut",
            "time_emb_proj",
        ]
    )
    init_from: str | None = None  # a LoRA .safetensors (kohya or peft) to start the first stage from


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    fused: bool | None = None  # None: fused AdamW when on CUDA
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_scheduler: str = (
        "constant_with_warmup"  # diffusers get_scheduler: constant, constant_with_warmup, cosine, linear, ...
    )
    disc_lr: float = 1e-4
    zero: bool = False  # several processes: ZeroRedundancyOptimizer (each keeps and saves its optimizer shard)


@dataclass
class StageConfig:
    """One stage of the progressive schedule; ``name`` picks the stage class from the registry."""

    name: str = "tscd"
    segments: int = 8
    # Segment counts of earlier stages this stage keeps training on (the unified recipe): a
    # keep_fraction share of each batch draws its k from keep_segments, so the LoRA still serves
    # those step counts after the final k=1 stage.
    keep_segments: list[int] = field(default_factory=list)
    keep_fraction: float = 0.0
    steps: int = 1000
    lr: float | None = None  # None: optim.lr
    loss: str = "huber"  # huber | mse
    huber_c: float = 0.001
    consistency_weight: float = 1.0
    adv_weight: float = 0.0  # 0 switches the discriminator off
    adv_loss: str = "hinge"  # hinge | nonsaturating
    d_steps: int = 1  # discriminator updates per generator update
    cfg_min: float = 1.0  # teacher guidance w ~ U[cfg_min, cfg_max] (diffusers scale; 1 = none)
    cfg_max: float = 1.0
    ema_decay: float = 0.95  # target network = EMA of the LoRA weights; 0 = the online student
    noise_perturbation: float = 0.0  # eps + gamma * xi on the forward noise
    # > 0 (tscd only): train on this many of the guided teacher's own trajectories from pure noise
    # instead of noised data (train/trajectories.py); each row: a segment start -> its edge
    trajectories: int = 0
    options: dict = field(default_factory=dict)  # free-form options for stage plugins


@dataclass
class SampleConfig:
    every: int = 0  # steps between TensorBoard sample grids (0: at stage ends only)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    prompts: list[str] = field(default_factory=list)  # empty: the data set's captions
    num: int = 8
    eta: float = 0.0  # TSCD gamma for grids
    cfg: float = 1.0
    teacher_steps: int = 25
    teacher_cfg: float = 3.0
    seed: int = 1234


@dataclass
class EvalConfig:
    enabled: bool = False  # metrics JSON (embedded digits only)
    per_digit: int = 20
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    reference_steps: int = 50
    teacher_steps: int = 25
    teacher_cfg: float = 3.0
    eta: float = 0.0
    seed: int = 4321


@dataclass
class ExportConfig:
    base_model: str | None = None  # None: from the model kind
    eta: float = 0.0  # recommended sampler settings written into the metadata
    cfg: float = 1.0
    strength: float = 1.0
    spacing: str = "trailing"
    steps: list[int] | None = None  # step counts the LoRA serves; None: [final stage's segments]
    # 1 step from pure noise at this timestep (the one-step sampler) for the final LoRA; None: the
    # final stage's own (a DMD stage's), else the TSCD sampler at t=999
    onestep_timestep: int | None = None
    dtype: str = "fp16"  # fp16 | bf16 | fp32: tensor dtype of the exported files (the official ones are fp16)
    key_names: str = "diffusers"  # diffusers | sd-scripts (SDXL: Stability's input_blocks/... names, as sd-scripts)
    title: str | None = None  # modelspec.title / ss_output_name; None: the file name


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(segments=k) for k in (8, 4, 2, 1)])
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    solver_steps: int = 40  # N: divisible by every stage's segment count
    num_train_timesteps: int = 1000
    seed: int = 0
    output: str = "outputs/run"
    mixed_precision: str = "no"  # no | fp16 | bf16
    grad_accum: int = 1
    checkpoint_every: int = 200  # optimizer steps; 0: only at stage ends
    keep_checkpoints: int = 2
    log_every: int = 10
    log_with: list[str] = field(
        default_factory=lambda: ["tensorboard"]
    )  # accelerate trackers: tensorboard, wandb, mlflow
    tracker_project: str = "hypersd"  # W&B / MLflow project (experiment) name
    threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: bool = True

    def validate(self) -> "TrainConfig":
        """Raise one ConfigError listing every problem (one line each); reads no model file."""
        problems = config_problems(self)
        if problems:
            raise ConfigError("\n".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _known_stage(name: str) -> bool:
    import sys

    reg = getattr(sys.modules.get("train.stages"), "_REGISTRY", {})  # plugins registered in this process
    return name in BUILTIN_STAGES or name in reg


class _Problems(list):
    """One message per problem found."""

    def need(self, ok: bool, msg: str) -> None:
        if not ok:
            self.append(msg)


def config_problems(cfg: TrainConfig) -> list[str]:
    """Every problem in ``cfg``, one line each: ranges, names, and the files it points at."""
    out = _Problems()
    need = out.need

    def pos(v, name: str, zero_ok: bool = False) -> None:
        good = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if zero_ok else v > 0)
        need(good, f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {v!r}")

    def in_unit(v, name: str) -> None:
        need(isinstance(v, (int, float)) and 0 <= v <= 1, f"{name} must be in [0, 1], got {v!r}")

    def steps_list(v, name: str) -> None:
        need(
            bool(v) and all(isinstance(k, int) and k >= 1 for k in v),
            f"{name} must be a list of step counts >= 1, got {v!r}",
        )

    m, d, lo, o = cfg.model, cfg.data, cfg.lora, cfg.optim
    need(m.kind in MODEL_KINDS, f"model.kind must be one of {', '.join(MODEL_KINDS)}, got {m.kind!r}")
    need(m.dtype in DTYPE_NAMES, f"model.dtype must be one of {', '.join(DTYPE_NAMES)}, got {m.dtype!r}")
    need(
        m.prediction_type in (None, *PREDICTION_TYPES),
        f"model.prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {m.prediction_type!r}",
    )
    need(d.kind in DATA_KINDS, f"data.kind must be one of {', '.join(DATA_KINDS)}, got {d.kind!r}")
    need(
        d.resolution is None or (isinstance(d.resolution, int) and d.resolution >= 8),
        f"data.resolution must be >= 8 pixels, got {d.resolution!r}",
    )
    need(isinstance(d.batch_size, int) and d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size!r}")
    in_unit(d.max_bad_fraction, "data.max_bad_fraction")
    need(isinstance(d.num_workers, int) and d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers!r}")
    need(
        isinstance(d.prefetch_factor, int) and d.prefetch_factor >= 1,
        f"data.prefetch_factor must be >= 1, got {d.prefetch_factor!r}",
    )
    need(isinstance(d.bucket_step, int) and d.bucket_step >= 8, f"data.bucket_step must be >= 8, got {d.bucket_step!r}")
    need(
        not (d.streaming and d.buckets),
        "data.streaming and data.buckets cannot be combined: buckets need the listed webdataset (data.streaming=false)",
    )
    need(not (d.streaming and d.kind != "webdataset"), "data.streaming applies to data.kind=webdataset only")
    need(isinstance(lo.rank, int) and lo.rank >= 1, f"lora.rank must be an integer >= 1, got {lo.rank!r}")
    if lo.alpha is not None:
        pos(lo.alpha, "lora.alpha")
    need(bool(lo.target_modules), "lora.target_modules is empty: name at least one module (e.g. to_q)")
    need(o.name in ("adamw", "adamw8bit"), f"optim.name must be 'adamw' or 'adamw8bit', got {o.name!r}")
    need(not (o.zero and o.name != "adamw"), "optim.zero (ZeroRedundancyOptimizer) supports optim.name=adamw only")
    pos(o.lr, "optim.lr")
    pos(o.disc_lr, "optim.disc_lr")
    pos(o.eps, "optim.eps")
    pos(o.max_grad_norm, "optim.max_grad_norm")
    pos(o.weight_decay, "optim.weight_decay", zero_ok=True)
    need(
        isinstance(o.warmup_steps, int) and o.warmup_steps >= 0,
        f"optim.warmup_steps must be >= 0, got {o.warmup_steps!r}",
    )
    need(
        len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas),
        f"optim.betas must be two numbers in [0, 1), got {list(o.betas)!r}",
    )
    need(
        isinstance(cfg.solver_steps, int) and 1 <= cfg.solver_steps <= cfg.num_train_timesteps,
        f"solver_steps must be in 1..num_train_timesteps ({cfg.num_train_timesteps}), got {cfg.solver_steps!r}",
    )
    if not cfg.stages:
        out.append("config has no stages; add at least one under 'stages'")
    for i, s in enumerate(cfg.stages):
        w = f"stages[{i}] ({s.name})"
        if not _known_stage(s.name):
            out.append(f"{w}: unknown stage {s.name!r}; known stages: {', '.join(sorted(BUILTIN_STAGES))}")
        if not (isinstance(s.segments, int) and s.segments >= 1) or cfg.solver_steps % s.segments:
            out.append(
                f"{w}: solver_steps={cfg.solver_steps} is not divisible by segments={s.segments}; "
                "use a grid divisible by every segment count (40 or 80 for 8/4/2/1)"
            )
        for k in s.keep_segments if isinstance(s.keep_segments, list) else [s.keep_segments]:
            if not (isinstance(k, int) and k >= 1) or cfg.solver_steps % k:
                out.append(
                    f"{w}: keep_segments entry {k!r} must be a segment count dividing solver_steps={cfg.solver_steps}"
                )
        need(
            isinstance(s.keep_fraction, (int, float)) and 0 <= s.keep_fraction <= 1,
            f"{w}: keep_fraction must be in [0, 1], got {s.keep_fraction!r}",
        )
        need(
            not s.keep_fraction or s.keep_segments,
            f"{w}: keep_fraction={s.keep_fraction} needs keep_segments (the segment counts to keep)",
        )
        least = 0 if lo.init_from else 1  # 0 steps only re-exports a LoRA given by lora.init_from
        need(
            isinstance(s.steps, int) and s.steps >= least,
            f"{w}: steps must be >= {least} (0 steps trains nothing; it only re-exports lora.init_from), got {s.steps!r}",
        )
        if s.lr is not None:
            pos(s.lr, f"{w}: lr")
        need(s.loss in ("huber", "mse"), f"{w}: loss must be 'huber' or 'mse', got {s.loss!r}")
        pos(s.huber_c, f"{w}: huber_c")
        pos(s.consistency_weight, f"{w}: consistency_weight", zero_ok=True)
        pos(s.adv_weight, f"{w}: adv_weight", zero_ok=True)
        need(
            s.adv_loss in ("hinge", "nonsaturating"),
            f"{w}: adv_loss must be 'hinge' or 'nonsaturating', got {s.adv_loss!r}",
        )
        need(isinstance(s.d_steps, int) and s.d_steps >= 1, f"{w}: d_steps must be >= 1, got {s.d_steps!r}")
        need(
            isinstance(s.ema_decay, (int, float)) and 0 <= s.ema_decay < 1,
            f"{w}: ema_decay must be in [0, 1), got {s.ema_decay!r}",
        )
        pos(s.cfg_min, f"{w}: cfg_min", zero_ok=True)
        need(
            not isinstance(s.cfg_max, (int, float)) or s.cfg_min <= s.cfg_max,
            f"{w}: cfg_min ({s.cfg_min}) > cfg_max ({s.cfg_max})",
        )
        pos(s.noise_perturbation, f"{w}: noise_perturbation", zero_ok=True)
        need(
            isinstance(s.trajectories, int) and s.trajectories >= 0,
            f"{w}: trajectories must be an integer >= 0, got {s.trajectories!r}",
        )
        if isinstance(s.trajectories, int) and s.trajectories > 0:
            need(s.name == "tscd", f"{w}: trajectories is a tscd stage option (the {s.name} stage trains on data)")
    steps_list(cfg.sample.steps, "sample.steps")
    steps_list(cfg.eval.steps, "eval.steps")
    in_unit(cfg.sample.eta, "sample.eta")
    in_unit(cfg.eval.eta, "eval.eta")
    in_unit(cfg.export.eta, "export.eta")
    for name, v in (
        ("sample.teacher_steps", cfg.sample.teacher_steps),
        ("eval.teacher_steps", cfg.eval.teacher_steps),
        ("eval.reference_steps", cfg.eval.reference_steps),
        ("eval.per_digit", cfg.eval.per_digit),
    ):
        need(isinstance(v, int) and v >= 1, f"{name} must be >= 1, got {v!r}")
    need(isinstance(cfg.sample.num, int) and cfg.sample.num >= 0, f"sample.num must be >= 0, got {cfg.sample.num!r}")
    need(
        cfg.export.spacing in ("trailing", "tcd"),
        f"export.spacing must be 'trailing' or 'tcd', got {cfg.export.spacing!r}",
    )
    pos(cfg.export.strength, "export.strength")
    if cfg.export.onestep_timestep is not None:
        need(
            isinstance(cfg.export.onestep_timestep, int) and 1 <= cfg.export.onestep_timestep < cfg.num_train_timesteps,
            f"export.onestep_timestep must be in [1, {cfg.num_train_timesteps - 1}], got {cfg.export.onestep_timestep}",
        )
    if cfg.export.steps is not None:
        steps_list(cfg.export.steps, "export.steps")
    need(
        cfg.mixed_precision in ("no", "fp16", "bf16"),
        f"mixed_precision must be no, fp16 or bf16, got {cfg.mixed_precision!r}",
    )
    need(
        o.lr_scheduler in LR_SCHEDULERS,
        f"optim.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {o.lr_scheduler!r}",
    )
    unknown = [t for t in cfg.log_with if t not in TRACKERS]
    need(not unknown, f"log_with: unknown tracker(s) {unknown}; use any of {', '.join(TRACKERS)} or []")
    need(
        cfg.export.dtype in ("fp16", "bf16", "fp32"),
        f"export.dtype must be fp16, bf16 or fp32, got {cfg.export.dtype!r}",
    )
    need(
        cfg.export.key_names in ("diffusers", "sd-scripts"),
        f"export.key_names must be diffusers or sd-scripts, got {cfg.export.key_names!r}",
    )
    need(isinstance(cfg.grad_accum, int) and cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum!r}")
    need(
        isinstance(cfg.checkpoint_every, int) and cfg.checkpoint_every >= 0,
        f"checkpoint_every must be >= 0 (0: only at stage ends), got {cfg.checkpoint_every!r}",
    )
    need(
        isinstance(cfg.keep_checkpoints, int) and cfg.keep_checkpoints >= 1,
        f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints!r}",
    )
    need(isinstance(cfg.log_every, int) and cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every!r}")
    need(
        cfg.threads is None or (isinstance(cfg.threads, int) and cfg.threads >= 1),
        f"threads must be >= 1, got {cfg.threads!r}",
    )
    return out


def input_problems(cfg: TrainConfig) -> list[str]:
    """Problems with the files and folders ``cfg`` names (checked before any model loads)."""
    out = _Problems()
    need = out.need
    m, d, lo = cfg.model, cfg.data, cfg.lora
    if m.kind in ("sd15", "sdxl", "folder"):
        if not m.path:
            out.append(
                f"model.kind={m.kind} needs model.path: a diffusers folder or a .safetensors checkpoint "
                "(--set model.path=/models/...)"
            )
        elif not Path(m.path).exists():
            out.append(f"model.path not found: {m.path}")
    if m.kind == "embedded" and m.path:
        from hypersd_models.embedded import embedded_folder, packaged_embedded

        need(
            (embedded_folder(m.path) / "meta.json").is_file(),
            f"model.path={m.path}: no embedded model there (a folder written by python -m train.embedded.make_embedded, "
            f"or a packaged one: {', '.join(packaged_embedded()) or 'none'})",
        )
    for key in ("teacher_path", "tokenizer_path", "config_path"):
        v = getattr(m, key)
        need(v is None or Path(v).exists(), f"model.{key} not found: {v}")
    if d.kind == "folder":
        need(bool(d.path), "data.kind=folder needs data.path: a folder of images with captions (--set data.path=...)")
        need(not d.path or Path(d.path).is_dir(), f"data.path is not a folder: {d.path}")
    if d.kind == "webdataset":
        need(bool(d.path), "data.kind=webdataset needs data.path: a shard pattern like data-{000..009}.tar")
    if d.kind == "hf":
        need(
            bool(d.path) and Path(d.path or "").exists(),
            f"data.kind=hf needs data.path: a local save_to_disk folder, .parquet file(s) or image folder (got {d.path!r})",
        )
    need(d.captions is None or Path(d.captions).is_file(), f"data.captions not found: {d.captions}")
    need(lo.init_from is None or Path(lo.init_from).is_file(), f"lora.init_from not found: {lo.init_from}")
    return out


# -- building from dicts -----------------------------------------------------------------------
def _coerce(tp, value, where: str):
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return (
            tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(get_args(tp), value)))
            if len(get_args(tp)) == len(value)
            else tuple(value)
        )
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    args = [a for a in get_args(tp) if a is not type(None)]
    if value is None:
        if tp is Any or type(None) in get_args(tp):
            return None
        kind = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, "a value")
        raise ConfigError(f"{where}: expected {kind}, got None (this key cannot be unset)")
    if args and origin is not dict:  # Optional[X] / unions
        tp = args[0]
        if get_origin(tp) in (list, tuple) or dataclasses.is_dataclass(tp):
            return _coerce(tp, value, where)
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads a bare `no` as false
        return "yes" if value else "no"
    if tp is bool and not isinstance(value, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp in (int, float) and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str and not isinstance(value, str):
        if isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a mapping; unknown keys are errors that name the valid ones."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    kw = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kw)


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge; lists (e.g. stages) are replaced, not merged."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"{path}: config files must be .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a config is YAML or JSON text") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: contains NUL bytes; a config is YAML or JSON text")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ConfigError("YAML configs need pyyaml: pip install pyyaml (or use a .json config)") from e
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{at}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML/JSON when it can be."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        import yaml

        value = yaml.safe_load(raw)
    except Exception:
        value = raw
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(
    preset: str | None = None,
    files: list[str] | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
) -> TrainConfig:
    """Defaults <- preset <- files <- ``extra`` <- overrides, validated."""
    data: dict = {}
    if preset:
        path = CONFIG_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(preset_names())}")
        data = merge(data, read_config_file(path))
    for f in files or []:
        data = merge(data, read_config_file(f))
    if extra:
        data = merge(data, extra)
    for o in overrides or []:
        ov = parse_override(o)
        if "stages" in ov and isinstance(ov["stages"], dict):
            raise ConfigError("override whole stage lists with a config file, or use stage_all.<key>=value")
        if "stage_all" in ov:  # stage_all.steps=20 sets a key in every stage
            upd = ov.pop("stage_all")
            base_stages = data.get("stages") or [dataclasses.asdict(s) for s in TrainConfig().stages]
            data["stages"] = [merge(s, upd) for s in base_stages]
        data = merge(data, ov)
    return from_dict(TrainConfig, data).validate()
