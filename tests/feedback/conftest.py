import pytest
import torch

TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)


def tiny_unet_with_lora(seed: int = 0, rank: int = 4, name: str = "student"):
    """A random tiny UNet2DConditionModel (frozen base) with one LoRA adapter whose B is non-zero."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=name
    )
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return unet


@pytest.fixture
def tiny_unet():
    return tiny_unet_with_lora()


@pytest.fixture
def embeddings():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
