"""Full-size random-weight SD1.5 components and SD1.5-shaped random LoRAs for the ComfyUI tests.

The configs are SD1.5's (runwayml/stable-diffusion-v1-5), written out here so nothing is
downloaded. Weights come from the libraries' default init under a fixed seed and are rounded to
fp16, so the fp16 files on disk hold exactly the weights the diffusers reference runs with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hypersd_core.lora_formats import atomic_write

# Bump when anything below changes what is written: cached files are keyed by it.
VERSION = "sd15-random-v2"
SEED = 1234

UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    act_fn="silu",
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14 text tower.
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # the official SD1.5 file name the workflows expect
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"  # the official name the ControlNet workflow loads
COMPONENT_FILES = {"unet": "unet.safetensors", "text_encoder": "text_encoder.safetensors", "vae": "vae.safetensors"}


def _fp16_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_components(out_dir: Path, seed: int = SEED) -> dict[str, Path]:
    """Write diffusers/transformers-layout fp16 state dicts of a random SD1.5 (one model at a time)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir.mkdir(parents=True, exist_ok=True)
    builders = {
        "unet": build_unet,
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)),
        "vae": lambda: AutoencoderKL(**VAE_CONFIG),
    }
    paths = {}
    for i, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + i)
        sd = _fp16_state_dict(build())
        if name == "text_encoder":  # transformers 5 drops the classic "text_model." prefix
            sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
        paths[name] = out_dir / COMPONENT_FILES[name]
        _atomic_save(lambda tmp: save_file(sd, tmp), paths[name])
        sd = None
    return paths


def load_unet(path: Path, dtype=torch.float32):
    """The diffusers UNet with the (fp16-rounded) weights of ``path``."""
    from safetensors.torch import load_file

    with torch.device("meta"):
        unet = build_unet()
    unet.load_state_dict({k: v.to(dtype) for k, v in load_file(str(path)).items()}, assign=True)
    return unet.eval()


# -- LoRAs ------------------------------------------------------------------------------------
def lora_targets(unet_sd_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Module path -> weight shape: every attention projection, feed-forward layer and
    proj_in/proj_out (what the official SD1.5 LoRAs touch), plus the resnet 3x3 convs of the
    outer 320-channel blocks (conv-shaped LoRA keys, without re-patching the big convs per test)."""
    linear = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")
    out = {}
    for key, shape in unet_sd_shapes.items():
        if not key.endswith(".weight"):
            continue
        mod = key[: -len(".weight")]
        outer_conv = mod.startswith(("down_blocks.0.resnets.", "up_blocks.3.resnets.")) and mod.endswith(
            (".conv1", ".conv2")
        )
        if (mod.endswith(linear) and ".attentions." in mod) or outer_conv:
            out[mod] = tuple(shape)
    return out


def random_lora(targets: dict[str, tuple], seed: int, rank: int = 4, scale: float = 0.05) -> dict[str, dict]:
    """Per module: down/up matrices (conv-shaped for conv weights) and alpha."""
    gen = torch.Generator().manual_seed(seed)
    mods = {}
    for mod, shape in sorted(targets.items()):
        out_f, in_f = shape[0], shape[1]
        if len(shape) == 4:
            down = torch.randn(rank, in_f, shape[2], shape[3], generator=gen) * scale
            up = torch.randn(out_f, rank, 1, 1, generator=gen) * scale
        else:
            down = torch.randn(rank, in_f, generator=gen) * scale
            up = torch.randn(out_f, rank, generator=gen) * scale
        mods[mod] = {"down": down.half(), "up": up.half(), "alpha": torch.tensor(float(rank) / 2)}
    return mods


def kohya_layout(mods: dict[str, dict]) -> dict[str, torch.Tensor]:
    """lora_unet_<path_with_underscores>.lora_down.weight / .lora_up.weight / .alpha (official files)."""
    sd = {}
    for mod, p in mods.items():
        name = "lora_unet_" + mod.replace(".", "_")
        sd[f"{name}.lora_down.weight"] = p["down"]
        sd[f"{name}.lora_up.weight"] = p["up"]
        sd[f"{name}.alpha"] = p["alpha"].half()
    return sd


def peft_layout(mods: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """unet.<path>.lora_A.weight / lora_B.weight, alphas in diffusers' adapter-metadata header."""
    sd = {}
    for mod, p in mods.items():
        sd[f"unet.{mod}.lora_A.weight"] = p["down"]
        sd[f"unet.{mod}.lora_B.weight"] = p["up"]
    rank = next(iter(mods.values()))["down"].shape[0]
    alpha = float(next(iter(mods.values()))["alpha"])
    meta = {"unet.lora_adapter_metadata": json.dumps({"r": rank, "lora_alpha": alpha})}
    return sd, meta


def diffusers_old_layout(mods: dict[str, dict]) -> dict[str, torch.Tensor]:
    """unet.<path>.lora.down.weight / .lora.up.weight with .alpha (diffusers' pre-peft LoRA layers)."""
    sd = {}
    for mod, p in mods.items():
        sd[f"unet.{mod}.lora.down.weight"] = p["down"]
        sd[f"unet.{mod}.lora.up.weight"] = p["up"]
        sd[f"unet.{mod}.alpha"] = p["alpha"].half()
    return sd


# Official names the workflows reference, each with its own weights, and peft- and old-diffusers-
# layout copies of the 1-step file's weights (same seed): every layout must give the same image.
LORA_FILES = {
    "Hyper-SD15-1step-lora.safetensors": ("kohya", 11),
    "Hyper-SD15-2steps-lora.safetensors": ("kohya", 12),
    "Hyper-SD15-4steps-lora.safetensors": ("kohya", 13),
    "Hyper-SD15-8steps-lora.safetensors": ("kohya", 14),
    "hypersd15-peft-layout-test-lora.safetensors": ("peft", 11),
    "hypersd15-diffusers-layout-test-lora.safetensors": ("diffusers_old", 11),
}


def build_loras(out_dir: Path, unet_path: Path) -> dict[str, Path]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(unet_path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    targets = lora_targets(shapes)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (layout, seed) in LORA_FILES.items():
        mods = random_lora(targets, seed)
        if layout == "kohya":
            sd, meta = kohya_layout(mods), {}
        elif layout == "peft":
            sd, meta = peft_layout(mods)
        else:
            sd, meta = diffusers_old_layout(mods), {}
        paths[name] = out_dir / name
        _atomic_save(lambda tmp: save_file(sd, tmp, metadata=meta), paths[name])
    return paths


def _atomic_save(write, path: Path) -> None:
    atomic_write(str(path), write)


# -- ControlNet -------------------------------------------------------------------------------
CONTROLNET_CONFIG = dict(
    in_channels=4,
    conditioning_channels=3,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=UNET_CONFIG["down_block_types"],
    block_out_channels=UNET_CONFIG["block_out_channels"],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
)


def build_controlnet(path: Path, seed: int = SEED + 10) -> Path:
    """A diffusers-layout SD1.5 ControlNet (ComfyUI converts the layout on load). Its zero convs
    get small random values instead of zeros, so the control image visibly changes the result."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = ControlNetModel(**CONTROLNET_CONFIG)
    with torch.no_grad():
        for name, p in net.named_parameters():
            zero_init = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
            if name.startswith(zero_init):
                p.normal_(0.0, 0.01)
    sd = _fp16_state_dict(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(lambda tmp: save_file(sd, tmp), path)
    return path
