"""Load models from local files: the embedded digit model, a tiny random one (tests), SD1.5 / SDXL
from a diffusers folder (``from_pretrained``) or a single .safetensors checkpoint
(``from_single_file``), TAESD decoders; dtypes by name. Shared by the trainer, the demo and the
benchmarks; nothing is downloaded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hypersd_core.schedule import VPSchedule

from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelLoadError(UserError, RuntimeError):
    """The model files are missing or unusable; the message says what to provide."""


@dataclass
class LoadedModel:
    kind: str
    unet: torch.nn.Module
    text_encoders: list
    tokenizers: list
    schedule: VPSchedule
    prediction_type: str
    resolution: int
    channels: int
    vae: torch.nn.Module | None = None  # None: pixel space (decode is the identity)
    scaling_factor: float = 1.0
    teacher_unet: torch.nn.Module | None = None
    base_model: str = "unknown"
    extras: dict = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) == 2


def load_model(cfg) -> LoadedModel:
    """Dispatch on ``cfg.kind`` (a ModelConfig)."""
    if cfg.dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype must be one of {list(DTYPES)}, got {cfg.dtype!r}")
    if cfg.kind == "embedded":
        m = _load_embedded(cfg)
    elif cfg.kind == "tiny":
        m = _build_tiny(cfg)
    elif cfg.kind in ("sd15", "sdxl", "folder"):
        m = _load_sd(cfg)
    else:
        raise ModelLoadError(f"model.kind must be embedded, tiny, sd15, sdxl or folder, got {cfg.kind!r}")
    if cfg.prediction_type:
        m.prediction_type = cfg.prediction_type
    if cfg.teacher_path:
        m.teacher_unet = _load_unet(cfg.teacher_path).requires_grad_(False)
    return m


def _load_embedded(cfg) -> LoadedModel:
    from .classifier import DigitClassifier
    from .embedded import classifier_path, load_embedded

    t = load_embedded(cfg.path, cfg.tokenizer_path)
    extras = {"data_layout": t.meta.get("data", "digits")}  # how its training data drew the digits
    if classifier_path(cfg.path).is_dir():
        extras["classifier"] = DigitClassifier.load(classifier_path(cfg.path))
    return LoadedModel(
        "embedded",
        t.unet,
        [t.text_encoder],
        [t.tokenizer],
        VPSchedule.scaled_linear(),
        t.meta.get("prediction_type", "epsilon"),
        t.resolution,
        1,
        base_model=t.meta.get("name", "embedded-digits"),
        extras=extras,
    )


TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    attention_head_dim=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)
TINY_TEXT = dict(
    vocab_size=49408,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=77,
    projection_dim=16,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)


def _build_tiny(cfg) -> LoadedModel:
    """A random tiny pixel-space teacher (8x8, seeded) for tests: shapes like the embedded model."""
    from .classifier import DigitClassifier
    from .embedded import build_text_encoder, build_unet, load_tokenizer

    text_cfg = dict(TINY_TEXT, **cfg.tiny.get("text", {}))
    unet_cfg = dict(TINY_UNET, cross_attention_dim=text_cfg["hidden_size"], **cfg.tiny.get("unet", {}))
    te = build_text_encoder(text_cfg, seed=0)
    torch.manual_seed(1)
    unet = build_unet(unet_cfg).requires_grad_(False)
    torch.manual_seed(2)
    res = unet_cfg["sample_size"]
    clf = DigitClassifier(res, feature_dim=16).eval().requires_grad_(False)
    return LoadedModel(
        "tiny",
        unet,
        [te],
        [load_tokenizer(cfg.tokenizer_path)],
        VPSchedule.scaled_linear(),
        "epsilon",
        res,
        1,
        base_model="tiny-test",
        extras={"classifier": clf},
    )


def _load_unet(path: str):
    from diffusers import UNet2DConditionModel

    p = Path(path)
    try:
        if p.is_file():
            return UNet2DConditionModel.from_single_file(str(p))
        sub = "unet" if (p / "unet").is_dir() else None
        return UNet2DConditionModel.from_pretrained(str(p), subfolder=sub)
    except Exception as e:
        raise ModelLoadError(f"cannot load a UNet from {path}: {e}") from e


def schedule_from_config(config: dict) -> VPSchedule:
    """The VP schedule a diffusers scheduler config describes (SD1.5/SDXL: scaled_linear)."""
    if config.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ModelLoadError(
            f"only the scaled_linear beta schedule of SD1.5/SDXL is supported, got {config.get('beta_schedule')!r}"
        )
    return VPSchedule.scaled_linear(
        config.get("beta_start", 0.00085), config.get("beta_end", 0.012), config.get("num_train_timesteps", 1000)
    )


def load_tiny_vae(path: str | os.PathLike, dtype=torch.float32, config: dict | None = None) -> torch.nn.Module:
    """AutoencoderTiny from a TAESD/TAESDXL diffusers folder, or a decoder-only .safetensors file
    in the original layout ComfyUI keeps in models/vae_approx (``taesd_decoder.safetensors``,
    ``taesdxl_decoder.safetensors``: same architecture, so the default config fits both)."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        return AutoencoderTiny.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: give a diffusers AutoencoderTiny folder or a .safetensors file")
    sd = load_file(str(path))
    if not any(k.startswith("decoder.") for k in sd):
        sd = {f"decoder.layers.{k}": v for k, v in sd.items()}  # original taesd_decoder layout
    vae = AutoencoderTiny.from_config(config) if config else AutoencoderTiny()
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    missing_dec = [k for k in missing if k.startswith("decoder.")]
    if missing_dec or unexpected:
        raise ValueError(f"{path} is not a TAESD decoder: missing {missing_dec[:3]}, unexpected {unexpected[:3]}")
    return vae.to(dtype)


class LatentDecoder(torch.nn.Module):
    """VAE decode as a plain module: latents (as the UNet sees them) -> image in [-1, 1]."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor + self.shift_factor, return_dict=False)[0]


def load_sd_pipeline(
    path: str | os.PathLike,
    kind: str | None = None,
    dtype=torch.float32,
    config_path: str | os.PathLike | None = None,
    tiny_vae: str | os.PathLike | None = None,
):
    """(pipeline, "sd15" | "sdxl") from a local diffusers folder or a single .safetensors checkpoint;
    nothing is downloaded. ``kind`` None: SDXL when the folder has text_encoder_2/. Single files
    need ``config_path`` offline: a local diffusers folder of the same architecture."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model path not found: {path}; give a diffusers folder or a .safetensors checkpoint")
    sdxl = kind == "sdxl" or (path.is_dir() and (path / "text_encoder_2").is_dir())
    try:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    except ImportError as e:
        raise ModelLoadError("SD models need diffusers: pip install 'hypersd-comfyui[train]'") from e
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    common = dict(torch_dtype=dtype, local_files_only=True)
    if not sdxl:
        common["safety_checker"] = None
    if tiny_vae:
        common["vae"] = load_tiny_vae(tiny_vae, dtype)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{path.name}: only .safetensors checkpoints are loaded (no pickled .ckpt files)")
        if config_path is None:
            raise ModelLoadError(
                f"loading the single file {path.name} offline needs its configs: set model.config_path (--config "
                "in the demo) to a local diffusers folder of the same architecture, or convert the checkpoint to a "
                "diffusers folder first"
            )
        try:
            pipe = cls.from_single_file(str(path), config=str(config_path), **common)
        except Exception as e:
            raise ModelLoadError(f"from_single_file failed for {path.name}: {e}") from e
    else:
        missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer") if not (path / s).is_dir()]
        if missing:
            raise ModelLoadError(f"{path} is not a diffusers SD folder: missing {', '.join(missing)}/")
        try:
            pipe = cls.from_pretrained(str(path), **common)
        except Exception as e:
            raise ModelLoadError(f"cannot load the diffusers folder {path}: {e}") from e
    return pipe, "sdxl" if sdxl else "sd15"


def _load_sd(cfg) -> LoadedModel:
    """SD1.5/SDXL components from a diffusers folder or a single-file checkpoint."""
    if not cfg.path:
        raise ModelLoadError(
            f"model.kind={cfg.kind} needs model.path: a diffusers folder (with unet/, vae/, "
            "text_encoder/, tokenizer/) or a .safetensors checkpoint"
        )
    pipe, kind = load_sd_pipeline(cfg.path, cfg.kind, DTYPES[cfg.dtype], getattr(cfg, "config_path", None))
    sdxl = kind == "sdxl"
    schedule = schedule_from_config(pipe.scheduler.config)
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    unet = pipe.unet
    unet.requires_grad_(False)
    encs = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    toks = [pipe.tokenizer] + ([pipe.tokenizer_2] if sdxl else [])
    for e in encs:
        e.requires_grad_(False).eval()
    vae = pipe.vae.requires_grad_(False).eval()
    res = unet.config.sample_size * (2 ** (len(vae.config.block_out_channels) - 1))
    return LoadedModel(
        kind,
        unet,
        encs,
        toks,
        schedule,
        pred,
        res,
        unet.config.in_channels,
        vae=vae,
        scaling_factor=vae.config.scaling_factor,
        base_model=kind,
    )
