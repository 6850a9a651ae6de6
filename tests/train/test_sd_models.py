"""SD1.5- and SDXL-shaped teachers from diffusers folders (tiny random components saved with
save_pretrained), trained for two steps on a folder of captioned images through the VAE latent
path, a latent/text cache, and the loaders' errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from train.config import ModelConfig, load_config
from hypersd_models.loading import TINY_UNET, ModelLoadError, load_model


def _save_tiny_pipeline(folder, tokenizer_path, sdxl: bool):
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    text = dict(
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
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    unet_kw = dict(TINY_UNET, in_channels=4, out_channels=4)
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_path))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if sdxl:
        unet = UNet2DConditionModel(
            cross_attention_dim=32,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=16 + 6 * 4,
            **unet_kw,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
            tokenizer=tok,
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
            tokenizer_2=tok,
            unet=unet,
            scheduler=sched,
        )
    else:
        unet = UNet2DConditionModel(cross_attention_dim=16, **unet_kw)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(folder)


def _image_folder(folder, n=4):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"a random picture number {i}")


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_folder_teacher_trains_on_latents(tmp_path, tokenizer_path, kind):
    from train.trainer import Trainer

    model_dir, data_dir = tmp_path / "model", tmp_path / "images"
    _save_tiny_pipeline(model_dir, tokenizer_path, sdxl=kind == "sdxl")
    _image_folder(data_dir)
    m = load_model(ModelConfig(kind=kind, path=str(model_dir)))
    assert m.vae is not None and m.resolution == 16 and m.is_sdxl == (kind == "sdxl")
    over = [
        f"output={tmp_path / 'out'}",
        f"model.path={model_dir}",
        f"data.path={data_dir}",
        "data.batch_size=2",
        "data.resolution=16",
        f"data.cache_dir={tmp_path / 'cache'}",
        "stage_all.steps=2",
        "model.dtype=fp32",
        "mixed_precision=no",
        "sample.num=2",
        "sample.steps=[1]",
        "sample.teacher_steps=2",
        "checkpoint_every=0",
        "progress=false",
        "stages=" + '[{"name": "tscd", "segments": 2, "steps": 2, "cfg_min": 1.0, "cfg_max": 3.0, "adv_weight": 0.1}]',
        "solver_steps=8",
        "lora.rank=2",
        "threads=1",
    ]
    results = Trainer(load_config(kind, overrides=over)).run()
    assert (tmp_path / "out" / "samples.png").is_file()
    from safetensors import safe_open

    cached = [safe_open(str(p), "pt").keys() for p in (tmp_path / "cache").rglob("*.safetensors")]
    assert sum("x0" in keys for keys in cached) == 4  # 2 steps x batch 2: every image's latent cached
    assert all("x0" in keys or "text.hidden" in keys for keys in cached)  # the rest: the captions' embeddings
    from hypersd_core.lora_formats import HyperSDMetadata, load_lora

    sd, header = load_lora(results["lora"]["kohya"])
    assert HyperSDMetadata.from_header(header).base_model == kind


def test_loader_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="needs model.path"):
        load_model(ModelConfig(kind="sd15"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(ModelConfig(kind="sd15", path=str(tmp_path / "nothing")))
    (tmp_path / "half").mkdir()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(ModelConfig(kind="sd15", path=str(tmp_path / "half")))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        load_model(ModelConfig(kind="sd15", path=str(ckpt)))
    with pytest.raises(ModelLoadError, match="model.kind"):
        load_model(ModelConfig(kind="flux", path=str(ckpt)))
