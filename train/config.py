"""Typed training configuration: dataclass defaults, overlaid by a preset file
(train/configs/<name>.yaml), a user file and ``--set a.b=value`` overrides, in that order."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value or file we cannot use; the message says what to change."""


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
    kind: str = "digits"  # digits | folder | webdataset
    path: str | None = None  # folder, or a shard pattern / list file for webdataset ("data-{000..009}.tar")
    captions: str | None = None  # jsonl/csv file for kind=folder; default: captions.jsonl/.csv or same-stem .txt
    resolution: int | None = None  # None: the model's native resolution
    batch_size: int = 64  # per process
    cache_dir: str | None = None  # precomputed latents + text embeddings (folder/webdataset)
    max_bad_fraction: float = 0.5  # fail when more than this share of samples cannot be read
    center_crop: bool = True
    random_flip: bool = False


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float | None = None  # None: = rank
    target_modules: list[str] = field(default_factory=lambda: [
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "time_emb_proj"])
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
    lr_scheduler: str = "constant_with_warmup"  # diffusers get_scheduler: constant, constant_with_warmup, cosine, linear, ...
    disc_lr: float = 1e-4


@dataclass
class StageConfig:
    """One stage of the progressive schedule; ``name`` picks the stage class from the registry."""

    name: str = "tscd"
    segments: int = 8
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
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers: tensorboard, wandb, mlflow
    tracker_project: str = "hypersd"  # W&B / MLflow project (experiment) name
    threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: bool = True

    def validate(self) -> "TrainConfig":
        if not self.stages:
            raise ConfigError("config has no stages; add at least one under 'stages'")
        for s in self.stages:
            if s.segments < 1 or self.solver_steps % s.segments:
                raise ConfigError(
                    f"solver_steps={self.solver_steps} is not divisible by stage {s.name!r} segments={s.segments}; "
                    "use a grid divisible by every segment count (40 or 80 for 8/4/2/1)")
            if s.loss not in ("huber", "mse"):
                raise ConfigError(f"stage loss must be 'huber' or 'mse', got {s.loss!r}")
            if not 0 <= s.ema_decay < 1:
                raise ConfigError(f"ema_decay must be in [0, 1), got {s.ema_decay}")
            if s.cfg_min > s.cfg_max:
                raise ConfigError(f"cfg_min ({s.cfg_min}) > cfg_max ({s.cfg_max})")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        from .optim import LR_SCHEDULERS
        from .tracking import TRACKERS

        unknown = [t for t in self.log_with if t not in TRACKERS]
        if unknown:
            raise ConfigError(f"log_with: unknown tracker(s) {unknown}; use any of {', '.join(TRACKERS)} or []")

        if self.optim.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"optim.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.optim.lr_scheduler!r}")
        if self.optim.name not in ("adamw", "adamw8bit"):
            raise ConfigError(f"optim.name must be 'adamw' or 'adamw8bit', got {self.optim.name!r}")
        if self.data.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("data.batch_size and grad_accum must be >= 1")
        if self.export.dtype not in ("fp16", "bf16", "fp32"):
            raise ConfigError(f"export.dtype must be fp16, bf16 or fp32, got {self.export.dtype!r}")
        if self.export.key_names not in ("diffusers", "sd-scripts"):
            raise ConfigError(f"export.key_names must be diffusers or sd-scripts, got {self.export.key_names!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
        return tuple(value)
    args = [a for a in get_args(tp) if a is not type(None)]
    if value is None:
        return None
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
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ConfigError("YAML configs need pyyaml: pip install pyyaml (or use a .json config)") from e
        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"{path.name}: config files must be .yaml, .yml or .json")
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


def load_config(preset: str | None = None, files: list[str] | None = None, overrides: list[str] | None = None,
                extra: dict | None = None) -> TrainConfig:
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
