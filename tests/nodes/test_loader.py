"""HyperSDLoraLoader on full-size SD1.5/SDXL architectures built on the meta device: every layout
maps every module through ComfyUI's own key maps, the patches equal hypersd_core's delta, and bad
files or mismatched models give clear errors."""

import logging

import pytest
import torch

from hypersd_core.lora_formats import HyperSDMetadata, lora_delta, save_lora

LAYOUTS = {
    "kohya": lambda m: (
        f"lora_unet_{m.replace('.', '_')}.lora_down.weight",
        f"lora_unet_{m.replace('.', '_')}.lora_up.weight",
    ),
    "peft": lambda m: (f"unet.{m}.lora_A.weight", f"unet.{m}.lora_B.weight"),
    "peft_base_model": lambda m: (f"base_model.model.{m}.lora_A.weight", f"base_model.model.{m}.lora_B.weight"),
    "diffusers_old": lambda m: (f"unet.{m}.lora.down.weight", f"unet.{m}.lora.up.weight"),
}


def unet_modules(patcher):
    """diffusers module path -> (ComfyUI weight key, shape) for every 2-D/4-D UNet weight."""
    import comfy.utils

    sd = patcher.model.state_dict()
    out = {}
    for dk, lk in comfy.utils.unet_to_diffusers(patcher.model.model_config.unet_config).items():
        key = "diffusion_model." + lk
        if dk.endswith(".weight") and key in sd and sd[key].ndim in (2, 4):
            out[dk[: -len(".weight")]] = (key, tuple(sd[key].shape))
    return out


def make_lora(modules, layout, rank=2, alpha=None, seed=0):
    """Random LoRA tensors for ``modules`` in the given key layout (kohya gets ``.alpha``)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for mod, (_, shape) in modules.items():
        if len(shape) == 4:
            down, up = (
                torch.randn(rank, shape[1], *shape[2:], generator=gen),
                torch.randn(shape[0], rank, 1, 1, generator=gen),
            )
        else:
            down, up = torch.randn(rank, shape[1], generator=gen), torch.randn(shape[0], rank, generator=gen)
        kdown, kup = LAYOUTS[layout](mod)
        sd[kdown], sd[kup] = down * 0.01, up * 0.01
        if layout == "kohya":
            sd[kdown.replace(".lora_down.weight", ".alpha")] = torch.tensor(float(alpha if alpha is not None else rank))
    return sd


@pytest.fixture
def loader(comfyui):
    return comfyui.nodes.NODE_CLASS_MAPPINGS["HyperSDLoraLoader"]


def run(loader, model, clip, name, strength=-1.0, strength_clip=1.0, mode=None):
    """mode None: a prompt saved before strength_mode existed (strength -1 = recommended)."""
    return loader.execute(model, clip, name, strength, strength_clip, mode).args


def no_key_warnings(caplog):
    bad = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert not bad, bad[:3]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_maps_every_sd15_unet_module(loader, sd15_meta, loras_dir, layout, caplog):
    model, clip = sd15_meta
    modules = unet_modules(model)
    assert len(modules) > 250  # the whole UNet: convs, resnets, attention, time embedding
    save_lora(loras_dir / f"sd15_{layout}.safetensors", make_lora(modules, layout))
    with caplog.at_level(logging.WARNING):
        patched, patched_clip, settings = run(loader, model, clip, f"sd15_{layout}.safetensors")
    no_key_warnings(caplog)
    assert set(patched.patches) == {key for key, _ in modules.values()}
    assert {p[0][0] for p in patched.patches.values()} == {1.0}  # no metadata: strength 1
    assert not model.patches, "the input MODEL must not be modified"
    assert not patched_clip.patcher.patches
    assert "no Hyper-SD metadata" in settings


def test_sdxl_kohya_lora_maps_every_module(loader, sdxl_meta, loras_dir, caplog):
    model, clip = sdxl_meta
    modules = unet_modules(model)
    save_lora(loras_dir / "sdxl_kohya.safetensors", make_lora(modules, "kohya"))
    with caplog.at_level(logging.WARNING):
        patched, _, _ = run(loader, model, clip, "sdxl_kohya.safetensors")
    no_key_warnings(caplog)
    assert set(patched.patches) == {key for key, _ in modules.values()}


def test_peft_patch_equals_core_delta_with_header_alpha(loader, sd15_meta, loras_dir):
    """ComfyUI's patch math on the converted file gives W + strength*(alpha/rank)*up@down."""
    import comfy.lora

    model, clip = sd15_meta
    modules = dict(list(unet_modules(model).items())[:40])
    sd = make_lora(modules, "peft", rank=4)
    header = {"lora_adapter_metadata": '{"r": 4, "lora_alpha": 2}'}
    save_lora(loras_dir / "peft_alpha.safetensors", sd, header)
    patched, _, _ = run(loader, model, clip, "peft_alpha.safetensors", strength=0.7)
    gen = torch.Generator().manual_seed(1)
    for mod in [m for m in modules if len(modules[m][1]) == 2][:3] + [m for m in modules if len(modules[m][1]) == 4][
        :2
    ]:
        key, shape = modules[mod]
        w0 = torch.randn(shape, generator=gen)
        got = comfy.lora.calculate_weight(patched.patches[key], w0.clone(), key)
        down, up = sd[f"unet.{mod}.lora_A.weight"], sd[f"unet.{mod}.lora_B.weight"]
        want = w0 + lora_delta(down, up, 2.0, strength=0.7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefix", ["lora_te_", "text_encoder."])
def test_text_encoder_keys_patch_clip(loader, sd15_meta, loras_dir, prefix, caplog):
    model, clip = sd15_meta
    sd = {}
    for layer in range(2):
        for proj, dim in (("self_attn.q_proj", 768), ("mlp.fc1", 768)):
            out = 3072 if proj == "mlp.fc1" else 768
            if prefix == "lora_te_":
                name = f"lora_te_text_model_encoder_layers_{layer}_{proj.replace('.', '_')}"
                sd.update(
                    {
                        f"{name}.lora_down.weight": torch.zeros(2, dim),
                        f"{name}.lora_up.weight": torch.zeros(out, 2),
                        f"{name}.alpha": torch.tensor(2.0),
                    }
                )
            else:
                name = f"text_encoder.text_model.encoder.layers.{layer}.{proj}"
                sd.update({f"{name}.lora_A.weight": torch.zeros(2, dim), f"{name}.lora_B.weight": torch.zeros(out, 2)})
    save_lora(loras_dir / f"te_{prefix}.safetensors", sd)
    with caplog.at_level(logging.WARNING):
        patched, patched_clip, _ = run(loader, model, clip, f"te_{prefix}.safetensors", strength_clip=0.5)
    no_key_warnings(caplog)
    assert not patched.patches
    assert len(patched_clip.patcher.patches) == 4
    assert {p[0][0] for p in patched_clip.patcher.patches.values()} == {0.5}


def test_metadata_strength_is_the_default_and_explicit_strength_wins(loader, sd15_meta, loras_dir):
    model, clip = sd15_meta
    modules = dict(list(unet_modules(model).items())[:5])
    meta = HyperSDMetadata(
        base_model="sd15", steps=list(range(1, 9)), strength=0.8, eta=0.5, spacing="tcd", onestep_timestep=800
    )
    save_lora(loras_dir / "ours.safetensors", make_lora(modules, "kohya"), meta)
    patched, _, settings = run(loader, model, clip, "ours.safetensors")
    assert {p[0][0] for p in patched.patches.values()} == {0.8}
    assert "steps 1-8" in settings and "tcd" in settings and "eta 0.5" in settings and "strength 0.8" in settings
    assert "One-Step Scheduler timestep 800" in settings  # a unified LoRA's one-step timestep
    patched, _, settings = run(loader, model, clip, "ours.safetensors", strength=0.5)
    assert {p[0][0] for p in patched.patches.values()} == {0.5}


def test_official_file_name_gives_its_preset(loader, sd15_meta, loras_dir):
    model, clip = sd15_meta
    modules = dict(list(unet_modules(model).items())[:5])
    save_lora(loras_dir / "Hyper-SD15-1step-lora.safetensors", make_lora(modules, "kohya"))
    _, _, settings = run(loader, model, clip, "Hyper-SD15-1step-lora.safetensors")
    assert "SD1.5" in settings and "tcd" in settings and "eta 1" in settings and "cfg 1 " in settings


def test_sdxl_lora_on_sd15_model_is_refused(loader, sd15_meta, sdxl_meta, loras_dir):
    modules = {m: v for m, v in unet_modules(sdxl_meta[0]).items() if "attn2.to_k" in m}
    save_lora(loras_dir / "xl_only.safetensors", make_lora(modules, "kohya"))
    with pytest.raises(ValueError, match=r"xl_only.safetensors is a SDXL LoRA but the model is SD1\.5"):
        run(loader, *sd15_meta, "xl_only.safetensors")
    modules = {m: v for m, v in unet_modules(sd15_meta[0]).items() if "attn2.to_k" in m}
    save_lora(loras_dir / "sd15_only.safetensors", make_lora(modules, "peft"))
    with pytest.raises(ValueError, match=r"SD1\.5 LoRA but the model is SDXL"):
        run(loader, *sdxl_meta, "sd15_only.safetensors")


def test_modules_the_model_lacks_are_refused(loader, sd15_meta, loras_dir):
    sd = make_lora(dict(list(unet_modules(sd15_meta[0]).items())[:3]), "kohya")
    sd.update(
        {
            "lora_unet_down_blocks_7_foo.lora_down.weight": torch.zeros(2, 8),
            "lora_unet_down_blocks_7_foo.lora_up.weight": torch.zeros(8, 2),
        }
    )
    save_lora(loras_dir / "partial.safetensors", sd)
    with pytest.raises(ValueError, match=r"1 module\(s\) of partial.safetensors match nothing.*down_blocks_7_foo"):
        run(loader, *sd15_meta, "partial.safetensors")


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "corrupt.safetensors",
            b"\x00\x01 this is not a safetensors file",
            "corrupt.safetensors: .*corrupt or not safetensors",
        ),
        ("pickled.ckpt", b"PK\x03\x04 pickle", "not a .safetensors file"),
    ],
)
def test_bad_files_give_clear_errors(loader, sd15_meta, loras_dir, name, content, message):
    (loras_dir / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        run(loader, *sd15_meta, name)


def test_unknown_layout_and_bad_values_are_refused(loader, sd15_meta, loras_dir):
    save_lora(loras_dir / "checkpoint_like.safetensors", {"model.diffusion_model.out.2.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="unrecognised LoRA layout"):
        run(loader, *sd15_meta, "checkpoint_like.safetensors")
    modules = dict(list(unet_modules(sd15_meta[0]).items())[:2])
    save_lora(
        loras_dir / "sd3.safetensors", make_lora(modules, "kohya"), HyperSDMetadata(base_model="sd3", strength=0.125)
    )
    with pytest.raises(ValueError, match=r"sd3.safetensors is a SD3 LoRA but the model is SD1\.5"):
        run(loader, *sd15_meta, "sd3.safetensors")
    save_lora(loras_dir / "plain.safetensors", make_lora(modules, "kohya"))
    with pytest.raises(ValueError, match="strength_mode 'auto': use one of recommended, custom"):
        run(loader, *sd15_meta, "plain.safetensors", mode="auto")
    with pytest.raises(FileNotFoundError):
        run(loader, *sd15_meta, "missing.safetensors")


def strengths(patched):
    return {p[0][0] for p in patched.patches.values()}


def test_strength_mode_and_old_saved_values(loader, sd15_meta, loras_dir):
    """recommended ignores strength_model; custom uses it (negative too, as in core LoraLoader);
    prompts saved before strength_mode existed keep their meaning: -1 = recommended, else custom."""
    model, clip = sd15_meta
    modules = dict(list(unet_modules(model).items())[:5])
    save_lora(
        loras_dir / "strength.safetensors",
        make_lora(modules, "kohya"),
        HyperSDMetadata(base_model="sd15", strength=0.8),
    )
    assert strengths(run(loader, model, clip, "strength.safetensors", 0.3, mode="recommended")[0]) == {0.8}
    assert strengths(run(loader, model, clip, "strength.safetensors", 0.3, mode="custom")[0]) == {0.3}
    assert strengths(run(loader, model, clip, "strength.safetensors", -1.0, mode="custom")[0]) == {-1.0}
    assert strengths(run(loader, model, clip, "strength.safetensors", -1.0, mode=None)[0]) == {0.8}
    assert strengths(run(loader, model, clip, "strength.safetensors", 0.5, mode=None)[0]) == {0.5}


def test_model_only_loader_skips_text_encoder_keys(comfyui, sd15_meta, loras_dir, caplog):
    model, _ = sd15_meta
    only = comfyui.nodes.NODE_CLASS_MAPPINGS["HyperSDLoraLoaderModelOnly"]
    schema = only.GET_SCHEMA()
    assert [i.id for i in schema.inputs] == ["model", "lora_name", "strength_model", "strength_mode"]
    assert [o.display_name for o in schema.outputs] == ["MODEL", "settings"]
    modules = dict(list(unet_modules(model).items())[:6])
    sd = make_lora(modules, "kohya")
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    sd.update(
        {
            f"{te}.lora_down.weight": torch.zeros(2, 768),
            f"{te}.lora_up.weight": torch.zeros(768, 2),
            f"{te}.alpha": torch.tensor(2.0),
        }
    )
    save_lora(loras_dir / "with_te.safetensors", sd, HyperSDMetadata(base_model="sd15", strength=0.9))
    with caplog.at_level(logging.INFO):
        patched, settings = only.execute(model, "with_te.safetensors", 1.0, "recommended").args
    no_key_warnings(caplog)
    assert "skipped 1 text-encoder module" in caplog.text
    assert set(patched.patches) == {key for key, _ in modules.values()} and strengths(patched) == {0.9}
    assert "strength 0.9" in settings


def diffusers_lora(model_cls, config: dict, name: str, rank: int = 1):
    """A LoRA in the official Hyper-SD3/FLUX files' layout (diffusers/peft: transformer.<module>.lora_A
    / lora_B) on every Linear of the diffusers transformer's blocks, from its full-size shapes on meta."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = getattr(diffusers, model_cls)(**config)
    sd, gen = {}, torch.Generator().manual_seed(0)
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "transformer_blocks" in mod_name:
            sd[f"transformer.{mod_name}.lora_A.weight"] = torch.randn(
                rank, mod.in_features, generator=gen, dtype=torch.float16
            )
            sd[f"transformer.{mod_name}.lora_B.weight"] = torch.zeros(mod.out_features, rank, dtype=torch.float16)
    return sd


FLUX_DEV = dict(guidance_embeds=True)  # diffusers' defaults are FLUX.1-dev's shapes
SD3_MEDIUM = dict(
    sample_size=128,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    joint_attention_dim=4096,
    pos_embed_max_size=192,
)


@pytest.mark.parametrize("steps", [8, 16])
def test_hyper_flux_loras_load_at_their_recommended_strength(comfyui, flux_meta, loras_dir, steps, caplog):
    name = f"Hyper-FLUX.1-dev-{steps}steps-lora.safetensors"
    if not (loras_dir / name).exists():
        save_lora(loras_dir / name, diffusers_lora("FluxTransformer2DModel", FLUX_DEV, name))
    mappings = comfyui.nodes.NODE_CLASS_MAPPINGS
    with caplog.at_level(logging.WARNING):
        patched, clip, settings = (
            mappings["HyperSDLoraLoader"].execute(flux_meta, None, name, 1.0, 1.0, "recommended").args
        )
        patched_only, settings_only = (
            mappings["HyperSDLoraLoaderModelOnly"].execute(flux_meta, name, 1.0, "recommended").args
        )
    no_key_warnings(caplog)
    assert clip is None and settings_only == settings
    # every one of the 19 double and 38 single blocks (diffusers' q/k/v land in ComfyUI's fused qkv slices)
    blocks = {tuple(k.split(".")[1:3]) for k in patched.patches}
    assert blocks == {("double_blocks", str(i)) for i in range(19)} | {("single_blocks", str(i)) for i in range(38)}
    assert set(patched.patches) == set(patched_only.patches)
    assert strengths(patched) == {0.125}
    assert f"FLUX.1, steps {steps}" in settings and "FluxGuidance 3.5" in settings and "cfg 1.0" in settings
    assert "euler" in settings and "strength 0.125" in settings


@pytest.mark.parametrize("steps, cfg", [(4, 3), (8, 5), (16, 7)])
def test_hyper_sd3_loras_load_at_their_recommended_strength(comfyui, sd3_meta, loras_dir, steps, cfg, caplog):
    name = f"Hyper-SD3-{steps}steps-CFG-lora.safetensors"
    if not (loras_dir / name).exists():
        save_lora(loras_dir / name, diffusers_lora("SD3Transformer2DModel", SD3_MEDIUM, name))
    only = comfyui.nodes.NODE_CLASS_MAPPINGS["HyperSDLoraLoaderModelOnly"]
    with caplog.at_level(logging.WARNING):
        patched, settings = only.execute(sd3_meta, name, 1.0, "recommended").args
    no_key_warnings(caplog)
    assert {k.split(".")[2] for k in patched.patches} == {str(i) for i in range(24)}  # joint_blocks.<i>
    assert strengths(patched) == {0.125}
    assert f"SD3, steps {steps}" in settings and f"cfg {cfg}" in settings and "sgm_uniform" in settings
    patched, _ = only.execute(sd3_meta, name, 0.25, "custom").args
    assert strengths(patched) == {0.25}


def test_flow_and_unet_loras_on_the_wrong_model_are_refused(comfyui, flux_meta, sd3_meta, sd15_meta, loras_dir):
    only = comfyui.nodes.NODE_CLASS_MAPPINGS["HyperSDLoraLoaderModelOnly"]
    flux_name = "Hyper-FLUX.1-dev-8steps-lora.safetensors"
    if not (loras_dir / flux_name).exists():
        save_lora(loras_dir / flux_name, diffusers_lora("FluxTransformer2DModel", FLUX_DEV, flux_name))
    with pytest.raises(ValueError, match=r"is a FLUX.1 LoRA but the model is SD1\.5"):
        only.execute(sd15_meta[0], flux_name, 1.0, "recommended")
    with pytest.raises(ValueError, match=r"is a FLUX.1 LoRA but the model is SD3"):
        only.execute(sd3_meta, flux_name, 1.0, "recommended")
    modules = {m: v for m, v in unet_modules(sd15_meta[0]).items() if "attn2.to_k" in m}
    save_lora(loras_dir / "sd15_for_flux.safetensors", make_lora(modules, "peft"))
    with pytest.raises(
        ValueError, match=r"SD1\.5 LoRA but the model is FLUX.1: load a FLUX.1 Hyper-SD LoRA \(e.g. Hyper-FLUX"
    ):
        only.execute(flux_meta, "sd15_for_flux.safetensors", 1.0, "recommended")
