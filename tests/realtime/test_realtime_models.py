"""hypersd_demo/models.py: local-folder SD1.5 loading (parity with diffusers' one-step LCM
pipeline), TAESD from a folder and from ComfyUI's decoder-only file, LoRA files, clear errors."""

import pytest
import torch


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory, tokenizer_path):
    """A tiny SD1.5-layout diffusers folder (random weights) written with save_pretrained."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_path)),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = tmp_path_factory.mktemp("sd15")
    pipe.save_pretrained(path)
    return path


def test_sd15_folder_one_step_matches_diffusers_lcm(sd15_folder):
    """One step at t=999 is x0 of the unit noise: diffusers' LCMScheduler returns the same latents
    (its c_skip at t=999 is 2.5e-9), so the start-noise and timestep conventions agree."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from hypersd_demo.models import build_generator, load_components

    comp = load_components("sd15", sd15_folder, dtype=torch.float32)
    assert comp.vae_scale_factor == 2 and comp.prediction_type == "epsilon"
    gen, _ = build_generator(comp)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = gen.prompt_embeddings("a red cube")
    ours = gen.sample_latents(z, None, cond)
    pipe = StableDiffusionPipeline.from_pretrained(str(sd15_folder), safety_checker=None, local_files_only=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a red cube",
        num_inference_steps=1,
        guidance_scale=1.0,
        latents=z.clone(),
        height=16,
        width=16,
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    img = gen.generate("a red cube", seed=0, height=16, width=16)
    assert img.shape == (1, 16, 16, 3) and img.dtype == torch.uint8


def test_missing_paths_say_what_to_do(tmp_path):
    from hypersd_demo.models import load_components
    from hypersd_models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="needs --path"):
        load_components("sd15")
    with pytest.raises(ModelLoadError, match="not found"):
        load_components("sdxl", tmp_path / "nope")
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="--config"):
        load_components("sd15", single)


def _small_taesd():
    from diffusers import AutoencoderTiny

    torch.manual_seed(1)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    )


def test_tiny_vae_from_folder_and_comfyui_decoder_file(tmp_path):
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    from hypersd_models.loading import LatentDecoder, load_tiny_vae

    vae = _small_taesd()
    vae.save_pretrained(tmp_path / "taesd")
    z = torch.randn(1, 4, 4, 4)
    want = LatentDecoder(vae)(z)
    torch.testing.assert_close(LatentDecoder(load_tiny_vae(tmp_path / "taesd"))(z), want)
    # models/vae_approx/taesd_decoder.safetensors: the decoder's Sequential keys without a prefix
    dec = {k[len("decoder.layers.") :]: v for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    save_file(dec, str(tmp_path / "taesd_decoder.safetensors"))
    loaded = load_tiny_vae(tmp_path / "taesd_decoder.safetensors", config=dict(vae.config))
    torch.testing.assert_close(LatentDecoder(loaded)(z), want)
    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a TAESD decoder"):
        load_tiny_vae(tmp_path / "bad.safetensors", config=dict(vae.config))
    assert isinstance(loaded, AutoencoderTiny)


def test_lora_file_is_merged(tiny, tmp_path):
    from hypersd_core.lora_formats import save_lora
    from hypersd_demo.models import build_generator

    base = build_generator(tiny)[0].generate("a cat", seed=1, height=32, width=32)
    mod = dict(tiny.unet.named_modules())["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"]
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    sd = {
        f"{key}.lora_down.weight": torch.randn(2, mod.in_features),
        f"{key}.lora_up.weight": torch.randn(mod.out_features, 2),
        f"{key}.alpha": torch.tensor(2.0),
    }
    save_lora(str(tmp_path / "l.safetensors"), sd)
    gen, merged = build_generator(tiny, lora=str(tmp_path / "l.safetensors"), lora_strength=1.0)
    assert len(merged) == 1
    assert not torch.equal(gen.generate("a cat", seed=1, height=32, width=32), base)
    merged.remove()
    assert torch.equal(gen.generate("a cat", seed=1, height=32, width=32), base)


def test_tune_for_speed_keeps_the_images(sd15_folder):
    """Fused QKV + channels-last (the GPU speed tweaks) give the same images up to rounding."""
    from hypersd_demo.models import build_generator, load_components

    ref = build_generator(load_components("sd15", sd15_folder, dtype=torch.float32))[0]
    fused_comp = load_components("sd15", sd15_folder, dtype=torch.float32)
    fused = build_generator(fused_comp, tune=True)[0]
    assert any("to_qkv" in n for n, _ in fused_comp.unet.named_modules())
    a = ref.generate("a red cube", seed=4, height=16, width=16).int()
    b = fused.generate("a red cube", seed=4, height=16, width=16).int()
    assert (a - b).abs().max() <= 2
