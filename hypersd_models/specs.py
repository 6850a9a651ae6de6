"""UNet configs of SD1.5 and SDXL with random weights (speed and memory depend on shapes only):
diffusers' UNet2DConditionModel configs (as in their published unet/config.json) and ComfyUI's
(as its model detection describes the checkpoints), each with tiny versions of the same
architecture for CPU code-path checks. The benchmarks and the tests share them (model specs, not benchmark code)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SDXL = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
# Same block types and conditioning as the real ones, a few MB of weights.
SD15_TINY = dict(
    SD15,
    block_out_channels=(32, 32, 64, 64),
    cross_attention_dim=32,
    attention_head_dim=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=8,
)
SDXL_TINY = dict(
    SDXL,
    block_out_channels=(32, 64, 64),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=32,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=8,
)


# ComfyUI's UNet configs (comfy/model_detection.py), for comfy.supported_models.SD15 / SDXL.
COMFY_SD15 = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
COMFY_SDXL = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# A ~1M-parameter SD1.5-shaped UNet that really runs on the CPU.
COMFY_SD15_TINY = dict(
    COMFY_SD15,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=[1, 1],
    transformer_depth=[1, 1],
    transformer_depth_output=[1, 1, 1, 1],
    context_dim=32,
    num_heads=2,
)


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: UNet config, native image size, text shapes (77 tokens)."""

    name: str
    config: dict
    resolution: int  # pixels; latents are resolution // 8
    text_len: int = 77
    pooled_dim: int = 0  # SDXL text_embeds width (0: SD1.5, no added conditioning)
    scale: int = 8  # pixels per latent pixel (1: pixel space, the embedded digits model)

    @property
    def latent(self) -> int:
        return self.resolution // self.scale

    def latent_size(self, resolution: int) -> int:
        return resolution // self.scale

    @property
    def cross_dim(self) -> int:
        return int(self.config["cross_attention_dim"])


def embedded_spec() -> ModelSpec:
    """The embedded digits teacher's architecture (pixel space, 1x16x16, random weights)."""
    from hypersd_models.embedded import RESOLUTION, UNET_CONFIG

    return ModelSpec("embedded", dict(UNET_CONFIG), RESOLUTION, scale=1)


SPECS = {
    "sd15": ModelSpec("sd15", SD15, 512),
    "sdxl": ModelSpec("sdxl", SDXL, 1024, pooled_dim=1280),
    "sd15-tiny": ModelSpec("sd15-tiny", SD15_TINY, 64),
    "sdxl-tiny": ModelSpec("sdxl-tiny", SDXL_TINY, 64, pooled_dim=32),
}


def build_unet(spec: ModelSpec, device="cpu", dtype=torch.float32, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.config)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    return unet.eval().requires_grad_(False)


def conditioning(
    spec: ModelSpec, batch: int, device="cpu", dtype=torch.float32, resolution: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, dict | None]:
    """Random text embeddings (batch, 77, cross_dim) and, for SDXL, its added conditioning."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, spec.text_len, spec.cross_dim, generator=g).to(device, dtype)
    if not spec.pooled_dim:
        return cond, None
    res = resolution or spec.resolution
    time_ids = torch.tensor([res, res, 0, 0, res, res], dtype=dtype).repeat(batch, 1).to(device)
    text_embeds = torch.randn(batch, spec.pooled_dim, generator=g).to(device, dtype)
    return cond, {"text_embeds": text_embeds, "time_ids": time_ids}
