"""LoRA files: detect the key layout, convert to kohya keys with ``.alpha``, read and write our
metadata in the safetensors header, and write files atomically.

Layouts handled:
- "kohya":    lora_unet_<path_with_underscores>.lora_down.weight / .lora_up.weight / .alpha
              (also lora_te_, lora_te1_, lora_te2_ for text encoders)
- "peft":     [base_model.model.|unet.|text_encoder.]<dotted.path>.lora_A[.<adapter>].weight / lora_B
- "diffusers_old": [unet.]<path>.lora.down.weight / .lora.up.weight, and attention processors
              (<path>.processor.to_q_lora.down.weight)
ComfyUI v0.8.0 loads kohya keys for SD1.5/SDXL but not the peft layout, so :func:`to_kohya`
is what a loader should call before handing the state dict to ComfyUI.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field, asdict
from typing import Mapping

import torch

METADATA_PREFIX = "hypersd."
FORMATS = ("kohya", "peft", "diffusers_old")

_PEFT_RE = re.compile(r"^(?P<mod>.+?)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_OLD_RE = re.compile(r"^(?P<mod>.+?)\.lora\.(?P<ud>up|down)\.weight$")
_PROC_RE = re.compile(r"^(?P<mod>.+?)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<ud>up|down)\.weight$")
_KOHYA_RE = re.compile(
    r"^(?P<mod>lora_(?:unet|te|te1|te2)_[A-Za-z0-9_]+)\.(?P<kind>lora_down\.weight|lora_up\.weight|alpha)$"
)

_PREFIX_TO_KOHYA = (
    ("base_model.model.", "lora_unet_"),
    ("unet.", "lora_unet_"),
    ("text_encoder_2.", "lora_te2_"),
    ("text_encoder.", "lora_te1_"),
    ("", "lora_unet_"),
)


class LoraFormatError(ValueError):
    """A LoRA file or state dict we cannot read; the message says what to do."""


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return the layout of a LoRA state dict: one of FORMATS."""
    keys = list(state_dict)
    if not keys:
        raise LoraFormatError("the LoRA file holds no tensors")
    if any(_KOHYA_RE.match(k) for k in keys):
        return "kohya"
    if any(_PEFT_RE.match(k) for k in keys):
        return "peft"
    if any(_OLD_RE.match(k) or _PROC_RE.match(k) for k in keys):
        return "diffusers_old"
    sample = ", ".join(keys[:3])
    raise LoraFormatError(
        f"unrecognised LoRA layout (first keys: {sample}); expected kohya (lora_unet_*.lora_down.weight), "
        "peft (*.lora_A.weight) or diffusers (*.lora.down.weight) keys"
    )


def _kohya_name(module_path: str) -> str:
    for prefix, kprefix in _PREFIX_TO_KOHYA:
        if module_path.startswith(prefix):
            rest = module_path[len(prefix) :]
            if prefix == "" and rest.startswith("text_model."):
                kprefix = "lora_te1_"
            return kprefix + rest.replace(".", "_")
    raise AssertionError("unreachable")


_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def _rank_alpha_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, dict]:
    """peft adapter configs from diffusers' ``lora_adapter_metadata`` header, per component.

    ``unet.save_lora_adapter`` writes the bare config ({"r", "lora_alpha", ...}: key ""); a
    pipeline's ``save_lora_weights`` prefixes each field with its component ("unet.lora_alpha").
    """
    out: dict[str, dict] = {}
    for key, val in (metadata or {}).items():
        if "lora_adapter_metadata" not in key:
            continue
        try:
            cfg = json.loads(val)
        except (TypeError, json.JSONDecodeError):
            continue
        if not isinstance(cfg, dict):
            continue
        for field_name, value in cfg.items():
            comp, _, name = field_name.rpartition(".")
            if comp and comp not in _COMPONENTS:
                comp, name = "", field_name
            out.setdefault(comp, {}).setdefault(name, value)
    return out


def _peft_alpha(module: str, rank: int, configs: dict[str, dict]) -> float | None:
    """The kohya alpha equivalent to peft's scaling for ``module`` (alpha/r, or alpha/sqrt(r)
    with rsLoRA), or None when the header says nothing."""
    comp, _, rest = module.partition(".")
    if comp in configs:
        cfg, name = configs[comp], rest
    elif len(configs) == 1:
        cfg, name = next(iter(configs.values())), module
    else:
        return None
    alpha = cfg.get("lora_alpha")
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):  # peft's get_pattern_key rule
            alpha = value
            break
    if alpha is None:
        return None
    return float(alpha) * (rank**0.5 if cfg.get("use_rslora") else 1.0)


def to_kohya(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    default_alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """Convert any supported layout to kohya keys with an ``.alpha`` per module.

    For peft/diffusers layouts the alpha comes from the header's adapter metadata when present,
    else ``default_alpha``, else the rank (scale 1, what diffusers assumes without alphas).
    """
    fmt = detect_format(state_dict)
    if fmt == "kohya":
        return dict(state_dict)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state_dict.items():
        m = _PEFT_RE.match(k)
        if m:
            pairs.setdefault(m["mod"], {})["down" if m["ab"] == "A" else "up"] = v
            continue
        m = _OLD_RE.match(k)
        if m:
            pairs.setdefault(m["mod"], {})[m["ud"]] = v
            continue
        m = _PROC_RE.match(k)
        if m:
            proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
            pairs.setdefault(f"{m['mod']}.{proj}", {})[m["ud"]] = v
            continue
        if k.endswith(".alpha"):
            pairs.setdefault(k[: -len(".alpha")], {})["alpha"] = v
            continue
        raise LoraFormatError(f"key {k!r} does not fit the {fmt} layout of the rest of the file")
    peft_cfgs = _rank_alpha_from_metadata(metadata)
    out: dict[str, torch.Tensor] = {}
    for mod, p in pairs.items():
        if "down" not in p or "up" not in p:
            raise LoraFormatError(f"module {mod!r} has only one of its two LoRA matrices; the file is incomplete")
        name = _kohya_name(mod)
        rank = p["down"].shape[0]
        alpha = p.get("alpha")
        if alpha is None:
            a = _peft_alpha(mod, rank, peft_cfgs)
            alpha = torch.tensor(float(a if a is not None else default_alpha if default_alpha is not None else rank))
        out[f"{name}.lora_down.weight"] = p["down"]
        out[f"{name}.lora_up.weight"] = p["up"]
        out[f"{name}.alpha"] = alpha.reshape(()).float()
    return out


def kohya_to_peft(
    state_dict: Mapping[str, torch.Tensor], module_names: list[str], prefix: str = "unet."
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """kohya keys -> diffusers/peft keys (``unet.<path>.lora_A.weight``) for the given dotted
    module names; returns the state dict and each module's alpha (for the adapter config)."""
    by_kohya = {_kohya_name(prefix + n): n for n in module_names}
    out, alphas = {}, {}
    for k, v in state_dict.items():
        m = _KOHYA_RE.match(k)
        if not m:
            raise LoraFormatError(f"not a kohya key: {k!r}")
        mod = by_kohya.get(m["mod"])
        if mod is None:
            raise LoraFormatError(f"kohya module {m['mod']!r} matches no module of the model")
        if m["kind"] == "alpha":
            alphas[mod] = float(v)
        else:
            ab = "lora_A" if m["kind"].startswith("lora_down") else "lora_B"
            out[f"{prefix}{mod}.{ab}.weight"] = v
    return out, alphas


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, strength: float = 1.0) -> torch.Tensor:
    """Delta W = strength * (alpha/rank) * up @ down (conv kernels flattened and restored)."""
    rank = down.shape[0]
    scale = strength * ((float(alpha) / rank) if alpha is not None else 1.0)
    if down.ndim == 4:
        if down.shape[2:] == (1, 1):
            w = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], down.shape[1], 1, 1)
        else:
            w = torch.einsum("or,rihw->oihw", up.flatten(1), down)
        return scale * w
    return scale * (up @ down)


# -- base model detection ---------------------------------------------------------------------
CROSS_ATTENTION_DIMS = {768: "sd15", 1024: "sd21", 2048: "sdxl"}
FLOW_BASES = ("sd3", "flux")  # flow-matching transformers: Hyper-SD3 / Hyper-FLUX.1 LoRAs
FLUX_HIDDEN_SIZE = 3072  # FLUX.1 (dev/schnell); SD3 medium is 1536, SD3.5 large 2432

_FLUX_KEY = re.compile(r"(^|[._])(single_transformer_blocks|single_blocks|double_blocks)[._]")
# top-level transformer blocks (SD/SDXL UNets nest theirs in down/mid/up blocks)
_MMDIT_KEY = re.compile(
    r"^(transformer\.|diffusion_model\.|lora_unet_|lora_transformer_|lycoris_)?(transformer_blocks|joint_blocks)[._]\d"
)


def infer_base_model(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Guess the base model: FLUX.1 / SD3 from their transformer block names (and FLUX.1's hidden
    size), SD1.5 / SD2 / SDXL from cross-attention key projections (768 / 1024 / 2048).

    Returns None when the file has nothing to judge from.
    """
    keys = list(state_dict)
    if any(_FLUX_KEY.search(k) for k in keys):
        return "flux"
    mmdit = [k for k in keys if _MMDIT_KEY.match(k)]
    if mmdit:
        down = [k for k in mmdit if re.search(r"attn[._]to_q[._]lora[._]?(A|down)", k)]
        width = int(state_dict[down[0]].shape[-1]) if down else None
        return "flux" if width == FLUX_HIDDEN_SIZE else "sd3"
    sd = to_kohya(state_dict) if detect_format(state_dict) != "kohya" else state_dict
    for k, v in sd.items():
        if k.startswith("lora_te2_"):
            return "sdxl"
        if k.startswith("lora_unet_") and re.search(r"attn2_to_[kv]\.lora_down\.weight$", k):
            return CROSS_ATTENTION_DIMS.get(int(v.shape[1]), f"unknown(cross_attention_dim={v.shape[1]})")
    return None


def lora_modules(state_dict: Mapping[str, torch.Tensor]) -> set[str]:
    """The module names a LoRA state dict patches, in its own key layout (suffixes removed)."""
    out = set()
    for k in state_dict:
        m = _KOHYA_RE.match(k) or _PEFT_RE.match(k) or _OLD_RE.match(k)
        out.add(m["mod"] if m else k.rsplit(".", 1)[0] if k.endswith((".alpha", ".dora_scale")) else k)
    return out


def kohya_pair_problem(lora: Mapping[str, torch.Tensor], target_shapes: Mapping[str, tuple]) -> str | None:
    """First problem of a kohya-keyed LoRA against the weights it patches, or None.

    ``target_shapes``: module name -> shape of the weight it patches. Checks that each module has
    both halves, that their ranks agree, that up @ down has the weight's shape, and that alpha is
    not 0 (ΔW = alpha/rank * up @ down would be 0: the module does nothing)."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in lora.items():
        m = _KOHYA_RE.match(k)
        if m:
            halves.setdefault(m["mod"], {})[m["kind"]] = v
    for mod in sorted(halves):
        h = halves[mod]
        down, up, alpha = h.get("lora_down.weight"), h.get("lora_up.weight"), h.get("alpha")
        if down is None or up is None:
            return f"module {mod} has only its {'lora_up' if down is None else 'lora_down'} half"
        if down.dim() < 2 or up.dim() < 2 or down.shape[0] != up.shape[1]:
            return f"module {mod}: lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)} disagree on the rank"
        if alpha is not None and alpha.numel() == 1 and float(alpha) == 0.0:
            return f"module {mod} has alpha 0, so it changes nothing (ΔW = alpha/rank · up·down)"
        shape = target_shapes.get(mod)
        if shape is not None and (up.shape[0] != shape[0] or (len(shape) > 1 and down.shape[1] != shape[1])):
            return (
                f"module {mod}: lora_up {tuple(up.shape)} · lora_down {tuple(down.shape)} does not fit the model's "
                f"weight {tuple(shape)}"
            )
    return None


# -- metadata ---------------------------------------------------------------------------------
@dataclass
class HyperSDMetadata:
    """What a Hyper-SD LoRA says about itself, stored as ``hypersd.*`` header strings."""

    base_model: str = "unknown"  # sd15 | sdxl | embedded-digits | ...
    steps: list[int] = field(default_factory=list)  # step counts it serves, e.g. [1..8]
    segments: int | None = None  # TSCD segments of the final stage
    prediction_type: str = "epsilon"
    strength: float = 1.0
    eta: float | None = None  # TSCD/TCD gamma
    cfg: float = 1.0  # ComfyUI convention: 1.0 = no guidance
    spacing: str = "trailing"  # timestep selection: trailing | tcd
    onestep_timestep: int | None = None
    stage: str | None = None  # tscd | feedback | dmd | unified
    extra: dict = field(default_factory=dict)

    def to_header(self) -> dict[str, str]:
        d = asdict(self)
        return {METADATA_PREFIX + k: json.dumps(v) for k, v in d.items() if v is not None}

    @classmethod
    def from_header(cls, header: Mapping[str, str] | None) -> "HyperSDMetadata | None":
        if not header or not any(k.startswith(METADATA_PREFIX) for k in header):
            return None
        known = cls.__dataclass_fields__
        kw = {}
        for k, v in header.items():
            if k.startswith(METADATA_PREFIX) and k[len(METADATA_PREFIX) :] in known:
                try:
                    kw[k[len(METADATA_PREFIX) :]] = json.loads(v)
                except json.JSONDecodeError:
                    raise LoraFormatError(f"metadata {k}={v!r} is not valid JSON; re-export the LoRA") from None
        return cls(**kw)


# -- sd-scripts' SDXL names -------------------------------------------------------------------
_RESNET_SGM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
    "time_emb_proj": "emb_layers.1",
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
}
_UNET_BLOCK_RE = re.compile(
    r"^(?P<where>down_blocks|up_blocks)\.(?P<i>\d+)\.(?P<kind>resnets|attentions)\.(?P<j>\d+)\.(?P<rest>.+)$"
)
_MID_BLOCK_RE = re.compile(r"^mid_block\.(?P<kind>resnets|attentions)\.(?P<j>\d+)\.(?P<rest>.+)$")


def sgm_unet_path(path: str, layers_per_block: int = 2) -> str:
    """A diffusers UNet module path in Stability's sgm/LDM naming (what sd-scripts writes for SDXL):
    down_blocks.1.attentions.0.proj_in -> input_blocks.4.1.proj_in, resnets.j.conv1 -> .0.in_layers.2."""
    m = _UNET_BLOCK_RE.match(path)
    if m:
        i, j = int(m["i"]), int(m["j"])
        index = 1 + i * (layers_per_block + 1) + j if m["where"] == "down_blocks" else i * (layers_per_block + 1) + j
        block = f"{'input_blocks' if m['where'] == 'down_blocks' else 'output_blocks'}.{index}"
        return _sgm_inner(f"{block}.{1 if m['kind'] == 'attentions' else 0}", m["kind"], m["rest"], path)
    m = _MID_BLOCK_RE.match(path)  # middle_block.0 / .2: resnets, .1: the transformer (no sub-index)
    if m:
        index = 1 if m["kind"] == "attentions" else 2 * int(m["j"])
        return _sgm_inner(f"middle_block.{index}", m["kind"], m["rest"], path)
    raise LoraFormatError(f"no sd-scripts name for UNet module {path!r}; export with diffusers key names")


def _sgm_inner(block: str, kind: str, rest: str, path: str) -> str:
    if kind == "attentions":
        return f"{block}.{rest}"
    if rest not in _RESNET_SGM:
        raise LoraFormatError(f"no sd-scripts name for UNet module {path!r}; export with diffusers key names")
    return f"{block}.{_RESNET_SGM[rest]}"


# -- metadata other tools read ----------------------------------------------------------------
EXPORT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# kohya sd-scripts' ss_base_model_version and Stability's ModelSpec architecture ids, by base model
SS_BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sd21": "sd_v2", "sdxl": "sdxl_base_v1-0", "sd3": "sd3", "flux": "flux1"}
MODELSPEC_ARCHITECTURES = {
    "sd15": "stable-diffusion-v1",
    "sd21": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sd3": "stable-diffusion-3-medium",
    "flux": "flux-1-dev",
}
MODELSPEC_IMPLEMENTATIONS = {
    "sdxl": "https://github.com/Stability-AI/generative-models",
    "flux": "https://github.com/black-forest-labs/flux",
}


def tool_metadata(
    meta: HyperSDMetadata, rank: int, alpha: float, resolution: int | None, title: str, dtype: str = "fp16"
) -> dict[str, str]:
    """The header keys A1111/Forge, kohya's tools, Civitai and LoRA managers read (kohya ``ss_*``
    and ModelSpec ``modelspec.*``), all strings, for a kohya-layout LoRA over a UNet."""
    base = meta.base_model
    out = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": f"{float(alpha):g}",
        "ss_base_model_version": SS_BASE_MODEL_VERSIONS.get(base, base),
        "ss_v2": str(base == "sd21"),
        "ss_output_name": title,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{MODELSPEC_ARCHITECTURES.get(base, base)}/lora",
        "modelspec.implementation": MODELSPEC_IMPLEMENTATIONS.get(base, "diffusers"),
        "modelspec.title": title,
        "modelspec.description": describe_metadata(meta),
        "modelspec.unet_dtype": dtype,
    }
    if resolution:
        out["modelspec.resolution"] = f"{int(resolution)}x{int(resolution)}"
    if meta.prediction_type in ("epsilon", "v_prediction"):
        out["modelspec.prediction_type"] = "v" if meta.prediction_type == "v_prediction" else "epsilon"
    return out


def describe_metadata(meta: HyperSDMetadata) -> str:
    steps = ",".join(map(str, meta.steps)) or "?"
    eta = "" if meta.eta is None else f", eta {meta.eta:g}"
    return (
        f"Hyper-SD LoRA ({meta.stage or 'distilled'}): steps {steps}, {meta.spacing} timesteps{eta}, "
        f"cfg {meta.cfg:g} (ComfyUI), strength {meta.strength:g}"
    )


def cast_lora(state_dict: Mapping[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating tensors in the export dtype (fp16 | bf16 | fp32), as the official files are fp16."""
    if dtype not in EXPORT_DTYPES:
        raise LoraFormatError(f"export dtype {dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    target = EXPORT_DTYPES[dtype]
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}


# -- files ------------------------------------------------------------------------------------
def load_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA .safetensors file (never pickle) -> (state dict, header metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoraFormatError(f"LoRA file not found: {path}")
    if not path.endswith(".safetensors"):
        raise LoraFormatError(
            f"{os.path.basename(path)} is not a .safetensors file; only safetensors LoRAs are loaded "
            "(pickled .ckpt/.pt/.bin files can run code: convert them to safetensors first)"
        )
    from .safetensors_check import SafetensorsFileError, inspect_safetensors

    try:
        info = inspect_safetensors(path)
    except SafetensorsFileError as e:
        raise LoraFormatError(str(e)) from None
    if not info["tensors"]:
        raise LoraFormatError(
            f"{os.path.basename(path)} holds no tensors; it is not a LoRA (re-download or re-export it)"
        )
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
        sd = load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise LoraFormatError(
            f"{os.path.basename(path)} is not a readable safetensors file ({e}); re-download or re-export it"
        ) from e
    check_lora_tensors(sd, os.path.basename(path))
    return sd, metadata


def check_lora_tensors(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse integer tensors and NaN/Inf weights, naming ``name`` and the first bad key."""
    for key, v in state_dict.items():
        if not v.is_floating_point():
            raise LoraFormatError(
                f"{name}: tensor {key!r} has dtype {v.dtype}, not floating point; this is not a "
                "LoRA's weights (re-export it)"
            )
        if not bool(torch.isfinite(v).all()):
            raise LoraFormatError(
                f"{name}: tensor {key!r} holds NaN or Inf values; the LoRA is broken "
                "(its training diverged): use an earlier checkpoint or retrain with a lower lr"
            )


def save_lora(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: HyperSDMetadata | Mapping[str, str] | None = None,
) -> str:
    """Write a .safetensors LoRA atomically: a temp file in the same folder, then rename."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    header = metadata.to_header() if isinstance(metadata, HyperSDMetadata) else dict(metadata or {})
    header.setdefault("format", "pt")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    check_lora_tensors(tensors, os.path.basename(path))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then move the result over ``path``; never leaves a half file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a ComfyUI running as another user must read it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) as ``atomic_write`` does."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(str(path), write)
