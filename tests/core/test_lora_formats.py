"""LoRA layouts, conversion to kohya keys, alpha convention vs peft, metadata, safe file IO."""

import json
import os
import re

import pytest
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from hypersd_core.lora_formats import (
    HyperSDMetadata,
    LoraFormatError,
    detect_format,
    infer_base_model,
    kohya_to_peft,
    load_lora,
    lora_delta,
    save_lora,
    to_kohya,
)

from .models import tiny_unet

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]  # linear, 1x1 conv, 3x3 conv
PATTERN_MODULE = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def lora_unet(cross_attention_dim=16, targets=TARGETS, **cfg):
    """A tiny UNet with a random (non-zero) peft LoRA injected through diffusers' add_adapter."""
    unet = tiny_unet(cross_attention_dim=cross_attention_dim)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **cfg)
    torch.manual_seed(3)
    unet.add_adapter(config)
    return unet, config


def peft_deltas(unet):
    """peft's own merged weights minus the base weights, per LoRA module."""
    deltas = {}
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer().weight.detach().clone()
            module.merge()
            deltas[name] = module.get_base_layer().weight.detach() - base
            module.unmerge()
    return deltas


def assert_kohya_matches_peft(kohya, deltas):
    assert len(kohya) == 3 * len(deltas)
    for name, delta in deltas.items():
        k = "lora_unet_" + name.replace(".", "_")
        ours = lora_delta(kohya[k + ".lora_down.weight"], kohya[k + ".lora_up.weight"], float(kohya[k + ".alpha"]))
        assert ours.shape == delta.shape
        assert torch.allclose(ours, delta, atol=1e-6, rtol=1e-5), name


@pytest.fixture(scope="module")
def patterned():
    unet, config = lora_unet(alpha_pattern={PATTERN_MODULE: 2})
    return unet, config, peft_deltas(unet)


def test_unet_adapter_file_alpha_from_header(tmp_path, patterned):
    """unet.save_lora_adapter: bare peft keys, header lora_adapter_metadata = the LoraConfig."""
    unet, _, deltas = patterned
    unet.save_lora_adapter(tmp_path, weight_name="a.safetensors")
    sd, header = load_lora(tmp_path / "a.safetensors")
    assert detect_format(sd) == "peft" and "lora_adapter_metadata" in header
    kohya = to_kohya(sd, header)
    assert detect_format(kohya) == "kohya"
    assert float(kohya["lora_unet_" + PATTERN_MODULE.replace(".", "_") + ".alpha"]) == 2.0  # alpha_pattern
    assert_kohya_matches_peft(kohya, deltas)


def test_pipeline_file_alpha_from_prefixed_header(tmp_path, patterned):
    """save_lora_weights: "unet." keys, header fields prefixed per component ("unet.lora_alpha")."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    unet, config, deltas = patterned
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=config.to_dict(),
        weight_name="p.safetensors",
    )
    sd, header = load_lora(tmp_path / "p.safetensors")
    assert all(k.startswith("unet.") for k in sd) and "unet.lora_alpha" in json.loads(header["lora_adapter_metadata"])
    assert_kohya_matches_peft(to_kohya(sd, header), deltas)


def test_rslora_alpha(tmp_path):
    unet, _ = lora_unet(targets=["to_q"], use_rslora=True)
    deltas = peft_deltas(unet)
    unet.save_lora_adapter(tmp_path, weight_name="r.safetensors")
    assert_kohya_matches_peft(to_kohya(*load_lora(tmp_path / "r.safetensors")), deltas)


def test_without_header_alpha_defaults_to_rank_or_default_alpha(patterned):
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(patterned[0])
    kohya = to_kohya(sd)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {4.0}  # scale 1
    assert {float(v) for k, v in to_kohya(sd, default_alpha=8).items() if k.endswith(".alpha")} == {8.0}


def _old_diffusers(sd):
    """Old diffusers layouts: <m>.lora.down/up and attention processors' to_q_lora.down/up."""
    out = {}
    for k, v in sd.items():
        k = k.replace("lora_A.weight", "lora.down.weight").replace("lora_B.weight", "lora.up.weight")
        m = re.match(r"(.+)\.(to_q|to_k|to_v|to_out\.0)\.lora\.(down|up)\.weight$", k)
        if m:
            proj = "to_out" if m[2] == "to_out.0" else m[2]
            k = f"{m[1]}.processor.{proj}_lora.{m[3]}.weight"
        out["unet." + k] = v
    return out


def test_old_diffusers_layouts(patterned):
    from peft.utils import get_peft_model_state_dict

    unet, _, deltas = patterned
    sd = get_peft_model_state_dict(unet)
    old = _old_diffusers(sd)
    assert any(".processor.to_out_lora.down." in k for k in old) and any(".lora.down." in k for k in old)
    assert detect_format(old) == "diffusers_old"
    kohya = to_kohya(old, default_alpha=8)  # old files carry no alpha: give the training alpha
    patterned_key = "lora_unet_" + PATTERN_MODULE.replace(".", "_")
    kohya = {k: v for k, v in kohya.items() if not k.startswith(patterned_key + ".")}  # trained with alpha 2
    assert_kohya_matches_peft(kohya, {n: d for n, d in deltas.items() if n != PATTERN_MODULE})


def test_kohya_passthrough_and_round_trip(patterned):
    from peft.utils import get_peft_model_state_dict

    unet, _, _ = patterned
    sd = {"unet." + k: v for k, v in get_peft_model_state_dict(unet).items()}
    kohya = to_kohya(sd, default_alpha=8)
    assert to_kohya(kohya) == kohya
    names = [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
    back, alphas = kohya_to_peft(kohya, names)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert set(alphas) == set(names) and set(alphas.values()) == {8.0}
    with pytest.raises(LoraFormatError, match="matches no module of the model"):
        kohya_to_peft(kohya, names[1:])
    with pytest.raises(LoraFormatError, match="not a kohya key"):
        kohya_to_peft({"unet.x.lora_A.weight": torch.zeros(1)}, names)


def test_detect_format_errors():
    with pytest.raises(LoraFormatError, match="holds no tensors"):
        detect_format({})
    with pytest.raises(LoraFormatError, match="unrecognised LoRA layout"):
        detect_format({"model.weight": torch.zeros(1)})
    half = {"unet.a.to_q.lora_A.weight": torch.zeros(4, 8)}
    with pytest.raises(LoraFormatError, match="only one of its two LoRA matrices"):
        to_kohya(half)


@pytest.mark.parametrize("cross, expected", [(768, "sd15"), (2048, "sdxl")])
def test_infer_base_model(cross, expected):
    unet, _ = lora_unet(cross_attention_dim=cross, targets=["to_k", "to_v"])
    from peft.utils import get_peft_model_state_dict

    sd = {"unet." + k: v for k, v in get_peft_model_state_dict(unet).items()}
    assert infer_base_model(sd) == expected
    assert infer_base_model(to_kohya(sd)) == expected


def test_infer_base_model_without_cross_attention():
    kohya = {
        "lora_unet_x_to_q.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_x_to_q.lora_up.weight": torch.zeros(320, 4),
    }
    assert infer_base_model(kohya) is None
    assert infer_base_model({"lora_te2_a.lora_down.weight": torch.zeros(4, 8)}) == "sdxl"


def test_lora_delta_conventions():
    down, up = torch.randn(4, 6), torch.randn(5, 4)
    assert torch.allclose(lora_delta(down, up, 2.0), 0.5 * up @ down)
    assert torch.allclose(lora_delta(down, up, None, strength=0.75), 0.75 * up @ down)


# -- metadata and files -------------------------------------------------------------------------
def test_metadata_header_round_trip(tmp_path):
    meta = HyperSDMetadata(
        base_model="sd15",
        steps=[1, 2, 4, 8],
        segments=1,
        strength=0.8,
        eta=0.3,
        cfg=1.0,
        spacing="tcd",
        onestep_timestep=999,
        stage="unified",
        extra={"note": "x"},
    )
    header = meta.to_header()
    assert all(isinstance(v, str) and k.startswith("hypersd.") for k, v in header.items())
    assert HyperSDMetadata.from_header(header) == meta
    path = save_lora(tmp_path / "m.safetensors", {"lora_unet_a.alpha": torch.tensor(4.0)}, meta)
    sd, header2 = load_lora(path)
    assert HyperSDMetadata.from_header(header2) == meta and header2["format"] == "pt"
    assert HyperSDMetadata.from_header({"format": "pt"}) is None and HyperSDMetadata.from_header(None) is None
    with pytest.raises(LoraFormatError, match="not valid JSON"):
        HyperSDMetadata.from_header({"hypersd.steps": "[1, 2"})


def test_load_lora_errors(tmp_path):
    with pytest.raises(LoraFormatError, match="LoRA file not found"):
        load_lora(tmp_path / "missing.safetensors")
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"\x80\x04pickle")
    with pytest.raises(LoraFormatError, match="not a .safetensors file.*convert them to safetensors"):
        load_lora(ckpt)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(LoraFormatError, match="bad.safetensors: header claims .* corrupt or not safetensors"):
        load_lora(bad)
    good = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(1000)}, good)
    good.write_bytes(good.read_bytes()[:-100])  # truncated download
    with pytest.raises(LoraFormatError, match="cut.safetensors: truncated.*download or copy it again"):
        load_lora(good)


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_save_lora_is_atomic(tmp_path, monkeypatch, error):
    path = tmp_path / "lora.safetensors"
    save_lora(path, {"lora_unet_a.alpha": torch.tensor(1.0)})
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise error

    monkeypatch.setattr("safetensors.torch.save_file", half_write)
    with pytest.raises(type(error)):
        save_lora(path, {"lora_unet_a.alpha": torch.tensor(2.0)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["lora.safetensors"]  # no temp files left
    monkeypatch.undo()
    save_lora(path, {"lora_unet_a.alpha": torch.tensor(2.0)})
    assert float(load_lora(path)[0]["lora_unet_a.alpha"]) == 2.0


def _pair(prefix: str, module: str, width: int, sep: str = ".") -> dict:
    if prefix == "kohya":
        name = "lora_unet_" + module.replace(".", "_")
        return {f"{name}.lora_down.weight": torch.zeros(2, width), f"{name}.lora_up.weight": torch.zeros(width, 2)}
    return {
        f"{prefix}{module}.lora_A.weight": torch.zeros(2, width),
        f"{prefix}{module}.lora_B.weight": torch.zeros(width, 2),
    }


@pytest.mark.parametrize(
    "sd, expected",
    [
        (_pair("transformer.", "single_transformer_blocks.0.attn.to_q", 3072), "flux"),
        (_pair("transformer.", "transformer_blocks.0.attn.to_q", 3072), "flux"),  # double blocks only: FLUX.1's width
        (_pair("kohya", "double_blocks.0.img_attn.qkv", 3072), "flux"),  # BFL names, kohya layout
        (_pair("transformer.", "transformer_blocks.0.attn.to_q", 1536), "sd3"),  # SD3 medium
        (_pair("kohya", "transformer_blocks.3.attn.to_q", 2432), "sd3"),  # SD3.5 large
        (_pair("unet.", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 768), "sd15"),
        (_pair("kohya", "input_blocks.4.1.transformer_blocks.0.attn2.to_k", 2048), "sdxl"),  # LDM names
    ],
)
def test_infer_base_model_flow_transformers(sd, expected):
    assert infer_base_model(sd) == expected


def test_lora_modules_strips_each_layout_suffix():
    from hypersd_core.lora_formats import lora_modules

    sd = {
        "lora_unet_a_b.lora_down.weight": 0,
        "lora_unet_a_b.lora_up.weight": 0,
        "lora_unet_a_b.alpha": 0,
        "transformer.x.y.lora_A.weight": 0,
        "transformer.x.y.lora_B.weight": 0,
        "unet.z.lora.down.weight": 0,
        "transformer.x.y.alpha": 0,
    }
    assert lora_modules(sd) == {"lora_unet_a_b", "transformer.x.y", "unet.z"}
