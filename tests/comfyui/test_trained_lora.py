"""A LoRA written by our trainer's own export path loads in a real ComfyUI through HyperSDLoraLoader
and samples with HyperSDTSCDSampler + HyperSDScheduler to what the trainer's sampler gives.

The LoRA: the trainer's peft adapter (train.lora.add_lora, default target modules, rank 4) on the
full-size random SD1.5 diffusers UNet whose weights the session checkpoint holds, lora_B set to
small seeded values (it starts at zero), written by train.export.export_lora with the header
lora_metadata gives for the sd15 preset's last stage (what Trainer._export writes at the end of
``python -m train``; tests/train/test_pipeline.py checks that the two agree), with a non-default
strength and eta so that "-1 = recommended" must read them from our header.
The reference: the same diffusers UNet with that adapter active at the metadata's strength,
sampled by train.sampling.sample_images (hypersd_core's sample_tscd on DiscreteVPDenoiser: what
the trainer's grids use) from the same seeded noise and per-step noise, conditioned on the prompt
encoded by transformers' CLIPTextModel with the checkpoint's text-encoder weights.
"""

import gc
import types

import pytest
import torch

from prompts import IMAGE_SIZE, POSITIVE, read_latent, saved_files, txt2img
from sd15_models import CHECKPOINT, TEXT_CONFIG, load_unet

pytestmark = pytest.mark.comfyui

NAME = "hypersd_trained_sd15.safetensors"
RANK, B_SCALE = 4, 0.01
EXPORT = dict(strength=0.8, eta=0.3)  # written into the metadata; the graph asks for -1 = recommended
RUN = dict(steps=2, seed=31)  # 2 steps: eta > 0 draws seeded noise between the steps


def _export_like_train(unet, out_dir):
    """The export that ends ``python -m train`` (the last stage's LoRA), called without a trainer."""
    from train.config import load_config
    from train.export import export_lora, lora_metadata
    from train.stages import get_stage

    cfg = load_config(
        "sd15", overrides=[f"lora.rank={RANK}", f"export.strength={EXPORT['strength']}", f"export.eta={EXPORT['eta']}"]
    )
    last = len(cfg.stages) - 1
    stage = get_stage(cfg.stages[last].name)(None, cfg.stages[last], last)  # metadata() reads only its config
    metadata = lora_metadata(cfg, stage.metadata(), base_model="sd15", prediction_type="epsilon")
    return export_lora(unet, out_dir, "hypersd_lora", metadata)


def _encode(comfy_path, text_encoder_path):
    """The prompt through transformers' CLIP with the checkpoint's weights and ComfyUI's SD1 tokenizer."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    te = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    flat = not any(k.startswith("text_model.") for k in te.state_dict())
    te.load_state_dict(
        {
            (k.removeprefix("text_model.") if flat else k): v.float()
            for k, v in load_file(str(text_encoder_path)).items()
        }
    )
    tok = CLIPTokenizer.from_pretrained(str(comfy_path / "comfy" / "sd1_tokenizer"))
    ids = tok([POSITIVE], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return te(ids).last_hidden_state


@pytest.fixture(scope="module")
def trained(comfy_path, comfy_dirs, sd15_files, tmp_path_factory):
    """Export the LoRA into the server's models/loras as NAME; return its metadata and the reference latent."""
    from hypersd_core.lora_formats import HyperSDMetadata, load_lora
    from train.config import LoraConfig
    from train.lora import adapters_disabled, add_lora, lora_named_parameters
    from train.sampling import sample_images

    unet = load_unet(sd15_files["unet"])
    torch.manual_seed(0)  # lora_A's gaussian init
    add_lora(unet, RANK, None, LoraConfig().target_modules)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in lora_named_parameters(unet).items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * B_SCALE)
            p.copy_(p.half().float())  # the export is fp16: the reference uses the values the file holds
    paths = _export_like_train(unet, tmp_path_factory.mktemp("train_out"))
    (comfy_dirs["models"] / "loras" / NAME).symlink_to(paths["kohya"])
    _, header = load_lora(paths["kohya"])
    meta = HyperSDMetadata.from_header(header)

    cond = _encode(comfy_path, sd15_files["text_encoder"])
    lat = IMAGE_SIZE // 8
    noise = torch.randn([1, 4, lat, lat], generator=torch.manual_seed(RUN["seed"]))  # = comfy.sample.prepare_noise
    unet.set_adapters(["default"], weights=[meta.strength])
    kw = dict(steps=RUN["steps"], eta=meta.eta, spacing=meta.spacing, seed=RUN["seed"])
    with torch.no_grad():
        ref = sample_images(unet, noise, cond, **kw)
        with adapters_disabled(unet):  # the base model: what strength 0 gives
            base = sample_images(unet, noise, cond, **kw)
    n_modules = sum(1 for n in lora_named_parameters(unet) if "lora_A" in n)
    del unet
    gc.collect()
    return types.SimpleNamespace(
        meta=meta, path=paths["kohya"], reference=ref / 0.18215, base=base / 0.18215, n_modules=n_modules
    )


def _prompt(strength, meta, prefix):
    p = txt2img(CHECKPOINT, NAME, strength, RUN["steps"], meta.spacing, meta.eta, RUN["seed"], IMAGE_SIZE, prefix)
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["lora", 2]}}
    return p


@pytest.fixture(scope="module")
def server_run(comfy, trained):
    """(latent, settings text, new log) of the graph at strength -1 (the metadata's 0.8)."""
    before = len(comfy.log_text())
    outputs = comfy.run(_prompt(-1.0, trained.meta, "trained_lora"))
    latent = read_latent(saved_files(comfy, outputs, "latents")[0])
    return latent, " ".join(map(str, outputs["show"]["text"])), comfy.log_text()[before:]


def test_the_export_is_the_trainers(trained):
    from hypersd_core.lora_formats import detect_format, load_lora

    meta = trained.meta
    assert (meta.base_model, meta.steps, meta.segments, meta.stage) == ("sd15", [1, 2, 4, 8], 1, "tscd")
    assert (meta.strength, meta.eta, meta.spacing, meta.cfg) == (EXPORT["strength"], EXPORT["eta"], "trailing", 1.0)
    assert meta.onestep_timestep == 800
    sd, _ = load_lora(trained.path)
    assert detect_format(sd) == "kohya"
    assert len([k for k in sd if k.endswith(".lora_down.weight")]) == trained.n_modules > 200


def test_loads_with_every_key_and_our_settings(server_run):
    _, settings, log = server_run
    assert "lora key not loaded" not in log, log[-3000:]
    assert settings.startswith(f"{NAME}: SD1.5, steps 1-8, spacing trailing, eta 0.3, cfg 1 (ComfyUI)"), settings
    # the sd15 preset gives the final LoRA the one-step sampler at t=800 (export.onestep_timestep)
    assert settings.endswith(
        f"strength {EXPORT['strength']:g}; 1 step: Hyper-SD One-Step Scheduler timestep 800 + DMD sampler"
    ), settings


def test_comfyui_equals_the_trainers_sampler(server_run, trained):
    """Equal to the reference with the adapter at 0.8, which differs from the base model's result
    (strength 0) by far more than the tolerance: the LoRA acts in ComfyUI."""
    got, ref, base = server_run[0], trained.reference, trained.base
    assert got.shape == ref.shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert torch.isfinite(got).all()
    scale = ref.abs().max().item()
    change = (ref - base).abs().max().item()
    assert change > 1e-2 * scale, f"the trained LoRA barely changes the result ({change:.3g} of {scale:.3g})"
    diff = (got - ref).abs().max().item()
    # Same weights and adapter, ComfyUI's merged LoRA vs peft's unmerged one, fp32 on the CPU.
    assert diff < 1e-4 * scale, f"ComfyUI vs the trainer's sampler: max abs diff {diff:.3g} (scale {scale:.3g})"
