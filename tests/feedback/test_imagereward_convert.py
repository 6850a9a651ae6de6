"""train/rewards/convert_imagereward.py on a tiny ImageReward-shaped checkpoint: the original key
names (BLIP's timm ViT, med.py's BERT, ImageReward's MLP) become a folder the imagereward reward
loads with nothing missing, every tensor lands where it belongs, and bad inputs get clear errors."""

import json
import re

import pytest
import torch

from train.rewards import build_reward
from train.rewards.convert_imagereward import ImageRewardConversionError, convert, main

# Tiny stand-in for ViT-L/16 at 224 px: 32 px images, 8 px patches -> 16 patches + [CLS].
VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "photo", "of"]
TEXT, TEXT_LAYERS, HEAD_DIMS = 24, 2, (1024, 128, 64, 16, 1)

# Key patterns of the official model, recorded from THUDM/ImageReward's own ImageReward(med_config)
# (commit c1392c6) with layer numbers replaced by {i}; the tiny checkpoint below must have the same.
ORIGINAL_PATTERNS = set(
    """
blip.text_encoder.embeddings.LayerNorm.bias blip.text_encoder.embeddings.LayerNorm.weight
blip.text_encoder.embeddings.position_embeddings.weight blip.text_encoder.embeddings.position_ids
blip.text_encoder.embeddings.word_embeddings.weight
blip.text_encoder.encoder.layer.{i}.attention.output.LayerNorm.bias blip.text_encoder.encoder.layer.{i}.attention.output.LayerNorm.weight
blip.text_encoder.encoder.layer.{i}.attention.output.dense.bias blip.text_encoder.encoder.layer.{i}.attention.output.dense.weight
blip.text_encoder.encoder.layer.{i}.attention.self.key.bias blip.text_encoder.encoder.layer.{i}.attention.self.key.weight
blip.text_encoder.encoder.layer.{i}.attention.self.query.bias blip.text_encoder.encoder.layer.{i}.attention.self.query.weight
blip.text_encoder.encoder.layer.{i}.attention.self.value.bias blip.text_encoder.encoder.layer.{i}.attention.self.value.weight
blip.text_encoder.encoder.layer.{i}.crossattention.output.LayerNorm.bias blip.text_encoder.encoder.layer.{i}.crossattention.output.LayerNorm.weight
blip.text_encoder.encoder.layer.{i}.crossattention.output.dense.bias blip.text_encoder.encoder.layer.{i}.crossattention.output.dense.weight
blip.text_encoder.encoder.layer.{i}.crossattention.self.key.bias blip.text_encoder.encoder.layer.{i}.crossattention.self.key.weight
blip.text_encoder.encoder.layer.{i}.crossattention.self.query.bias blip.text_encoder.encoder.layer.{i}.crossattention.self.query.weight
blip.text_encoder.encoder.layer.{i}.crossattention.self.value.bias blip.text_encoder.encoder.layer.{i}.crossattention.self.value.weight
blip.text_encoder.encoder.layer.{i}.intermediate.dense.bias blip.text_encoder.encoder.layer.{i}.intermediate.dense.weight
blip.text_encoder.encoder.layer.{i}.output.LayerNorm.bias blip.text_encoder.encoder.layer.{i}.output.LayerNorm.weight
blip.text_encoder.encoder.layer.{i}.output.dense.bias blip.text_encoder.encoder.layer.{i}.output.dense.weight
blip.text_proj.bias blip.text_proj.weight blip.vision_proj.bias blip.vision_proj.weight
blip.visual_encoder.blocks.{i}.attn.proj.bias blip.visual_encoder.blocks.{i}.attn.proj.weight
blip.visual_encoder.blocks.{i}.attn.qkv.bias blip.visual_encoder.blocks.{i}.attn.qkv.weight
blip.visual_encoder.blocks.{i}.mlp.fc1.bias blip.visual_encoder.blocks.{i}.mlp.fc1.weight
blip.visual_encoder.blocks.{i}.mlp.fc2.bias blip.visual_encoder.blocks.{i}.mlp.fc2.weight
blip.visual_encoder.blocks.{i}.norm1.bias blip.visual_encoder.blocks.{i}.norm1.weight
blip.visual_encoder.blocks.{i}.norm2.bias blip.visual_encoder.blocks.{i}.norm2.weight
blip.visual_encoder.cls_token blip.visual_encoder.norm.bias blip.visual_encoder.norm.weight
blip.visual_encoder.patch_embed.proj.bias blip.visual_encoder.patch_embed.proj.weight blip.visual_encoder.pos_embed
mlp.layers.{i}.bias mlp.layers.{i}.weight
""".split()
)


def _linear(sd, name, n_out, n_in):
    sd[f"{name}.weight"] = torch.randn(n_out, n_in) / n_in**0.5
    sd[f"{name}.bias"] = 0.1 * torch.randn(n_out)


def _norm(sd, name, n):
    sd[f"{name}.weight"] = 1 + 0.2 * torch.randn(n)
    sd[f"{name}.bias"] = 0.1 * torch.randn(n)


def original_state_dict(vocab_size: int) -> dict[str, torch.Tensor]:
    """Random weights under ImageReward's own names: BLIP's VisionTransformer (vit.py: patch_embed,
    cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), med.py's
    BertModel with cross-attention, BLIP_Pretrain's vision_proj/text_proj and ImageReward's MLP."""
    torch.manual_seed(0)
    d, p, n_pos = VIT["hidden_size"], VIT["patch_size"], (VIT["image_size"] // VIT["patch_size"]) ** 2 + 1
    sd = {
        "blip.visual_encoder.cls_token": torch.randn(1, 1, d),
        "blip.visual_encoder.pos_embed": torch.randn(1, n_pos, d),
        "blip.visual_encoder.patch_embed.proj.weight": torch.randn(d, 3, p, p) / (3 * p * p) ** 0.5,
        "blip.visual_encoder.patch_embed.proj.bias": 0.1 * torch.randn(d),
    }
    for i in range(VIT["num_hidden_layers"]):
        b = f"blip.visual_encoder.blocks.{i}"
        _norm(sd, f"{b}.norm1", d)
        _linear(sd, f"{b}.attn.qkv", 3 * d, d)
        _linear(sd, f"{b}.attn.proj", d, d)
        _norm(sd, f"{b}.norm2", d)
        _linear(sd, f"{b}.mlp.fc1", 4 * d, d)
        _linear(sd, f"{b}.mlp.fc2", d, 4 * d)
    _norm(sd, "blip.visual_encoder.norm", d)
    t = "blip.text_encoder"
    sd[f"{t}.embeddings.word_embeddings.weight"] = torch.randn(vocab_size, TEXT)
    sd[f"{t}.embeddings.position_embeddings.weight"] = torch.randn(64, TEXT)
    sd[f"{t}.embeddings.position_ids"] = torch.arange(64).expand(1, -1)
    _norm(sd, f"{t}.embeddings.LayerNorm", TEXT)
    for i in range(TEXT_LAYERS):
        layer = f"{t}.encoder.layer.{i}"
        for att, kv_width in (("attention", TEXT), ("crossattention", d)):
            _linear(sd, f"{layer}.{att}.self.query", TEXT, TEXT)
            _linear(sd, f"{layer}.{att}.self.key", TEXT, kv_width)
            _linear(sd, f"{layer}.{att}.self.value", TEXT, kv_width)
            _linear(sd, f"{layer}.{att}.output.dense", TEXT, TEXT)
            _norm(sd, f"{layer}.{att}.output.LayerNorm", TEXT)
        _linear(sd, f"{layer}.intermediate.dense", 37, TEXT)
        _linear(sd, f"{layer}.output.dense", TEXT, 37)
        _norm(sd, f"{layer}.output.LayerNorm", TEXT)
    _linear(sd, "blip.vision_proj", 256, d)
    _linear(sd, "blip.text_proj", 256, TEXT)
    n_in = TEXT
    for i, n_out in zip((0, 2, 4, 6, 7), HEAD_DIMS):  # nn.Sequential with Dropout at 1, 3, 5
        _linear(sd, f"mlp.layers.{i}", n_out, n_in)
        n_in = n_out
    return sd


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """ImageReward.pt (torch.save of the state dict), med_config.json and a BERT vocab folder."""
    root = tmp_path_factory.mktemp("imagereward_original")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    med = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TEXT,
        "initializer_range": 0.02,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": TEXT_LAYERS,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(WORDS) + 2,
        "encoder_width": 768,
        "add_cross_attention": True,
    }
    (root / "med_config.json").write_text(json.dumps(med))
    sd = original_state_dict(len(WORDS) + 2)
    torch.save(sd, root / "ImageReward.pt")
    return root, sd


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
    root, _ = original
    out = tmp_path_factory.mktemp("imagereward_converted") / "ir"
    return convert(root / "ImageReward.pt", root / "med_config.json", root / "bert", out, vision=VIT)


def test_tiny_checkpoint_has_the_official_key_names(original):
    _, sd = original
    assert {re.sub(r"\.\d+\.", ".{i}.", k) for k in sd} == ORIGINAL_PATTERNS


def test_converted_folder_loads_with_no_missing_or_unexpected_keys(converted):
    from transformers import BlipForImageTextRetrieval

    assert {p.name for p in converted.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "mlp.safetensors",
        "imagereward.json",
        "tokenizer_config.json",
    }
    _, info = BlipForImageTextRetrieval.from_pretrained(str(converted), output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    opts = json.loads((converted / "imagereward.json").read_text())
    assert (opts["mean"], opts["std"], opts["max_length"]) == (0.16717362830052426, 1.0333394966054072, 35)


def test_tensors_are_routed_to_the_right_modules(original, converted):
    _, sd = original
    reward = build_reward({"name": "imagereward", "path": str(converted)})
    v, t = reward.vision, reward.text
    emb = v.embeddings
    assert torch.equal(emb.class_embedding, sd["blip.visual_encoder.cls_token"])
    assert torch.equal(emb.position_embedding, sd["blip.visual_encoder.pos_embed"])
    assert torch.equal(emb.patch_embedding.weight, sd["blip.visual_encoder.patch_embed.proj.weight"])
    assert torch.equal(v.post_layernorm.weight, sd["blip.visual_encoder.norm.weight"])
    for i, layer in enumerate(v.encoder.layers):
        b = f"blip.visual_encoder.blocks.{i}"
        # both fuse q, k, v as (3, heads, head_dim) rows: the block's qkv is copied whole
        assert torch.equal(layer.self_attn.qkv.weight, sd[f"{b}.attn.qkv.weight"])
        assert torch.equal(layer.self_attn.qkv.bias, sd[f"{b}.attn.qkv.bias"])
        assert torch.equal(layer.self_attn.projection.weight, sd[f"{b}.attn.proj.weight"])
        assert torch.equal(layer.layer_norm1.weight, sd[f"{b}.norm1.weight"])
        assert torch.equal(layer.layer_norm2.bias, sd[f"{b}.norm2.bias"])
        assert torch.equal(layer.mlp.fc1.weight, sd[f"{b}.mlp.fc1.weight"])
        assert torch.equal(layer.mlp.fc2.bias, sd[f"{b}.mlp.fc2.bias"])
    x = "blip.text_encoder.encoder.layer.1"
    assert torch.equal(t.encoder.layer[1].crossattention.self.key.weight, sd[f"{x}.crossattention.self.key.weight"])
    assert torch.equal(t.encoder.layer[1].attention.self.value.bias, sd[f"{x}.attention.self.value.bias"])
    assert torch.equal(t.embeddings.word_embeddings.weight, sd["blip.text_encoder.embeddings.word_embeddings.weight"])
    for i in (0, 2, 4, 6, 7):
        assert torch.equal(reward.head.layers[i].weight, sd[f"mlp.layers.{i}.weight"])
        assert torch.equal(reward.head.layers[i].bias, sd[f"mlp.layers.{i}.bias"])
    tok = reward.tokenizer
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(WORDS), len(WORDS) + 1]
    assert tok("a red cat").input_ids[0] == WORDS.index("[CLS]")  # ImageReward scores with [CLS] first


def test_converted_reward_scores_and_backprops(converted):
    reward = build_reward({"name": "imagereward", "path": str(converted)})
    images = (torch.rand(1, 3, 32, 32) * 2 - 1).expand(2, -1, -1, -1).clone().requires_grad_(True)
    r = reward(images, ["a red cat", "a photo of a dog"])
    assert r.shape == (2,) and torch.isfinite(r).all() and not torch.allclose(r[0], r[1])
    r.sum().backward()
    assert images.grad.abs().sum() > 0


def _write_pt(tmp_path, sd, name="bad.pt"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_errors_name_the_problem(original, tmp_path):
    root, sd = original
    med, bert = root / "med_config.json", root / "bert"

    def run(ckpt, med_config=med, tokenizer=bert, out=tmp_path / "out"):
        return convert(ckpt, med_config, tokenizer, out, vision=VIT)

    with pytest.raises(ImageRewardConversionError, match="does not exist.*ImageReward.pt"):
        run(tmp_path / "nope.pt")
    with pytest.raises(ImageRewardConversionError, match="med config .* does not exist"):
        run(root / "ImageReward.pt", med_config=tmp_path / "nope.json")
    with pytest.raises(ImageRewardConversionError, match="lacks vocab.txt.*bert-base-uncased"):
        run(root / "ImageReward.pt", tokenizer=tmp_path)
    missing = {k: v for k, v in sd.items() if ".blocks.1.norm2." not in k}
    with pytest.raises(
        ImageRewardConversionError, match=r"missing .*vision_model\.encoder\.layers\.1\.layer_norm2\.bias"
    ):
        run(_write_pt(tmp_path, missing))
    extra = dict(sd, **{"blip.itm_head.weight": torch.zeros(2, TEXT), "mlp.layers.9.weight": torch.zeros(1)})
    with pytest.raises(ImageRewardConversionError, match=r"unexpected keys: blip\.itm_head\.weight, mlp\.layers\.9"):
        run(_write_pt(tmp_path, extra))
    wrong = dict(sd, **{"blip.visual_encoder.pos_embed": torch.zeros(1, 50, VIT["hidden_size"])})
    with pytest.raises(
        ImageRewardConversionError, match=r"shape mismatch.*position_embedding: \(1, 50, 32\) vs \(1, 17, 32\)"
    ):
        run(_write_pt(tmp_path, wrong))
    head = dict(sd, **{"mlp.layers.2.weight": torch.zeros(128, 999)})
    with pytest.raises(ImageRewardConversionError, match=r"mlp\.layers\.2: weight \(128, 999\)"):
        run(_write_pt(tmp_path, head))
    assert not (tmp_path / "out").exists()


class _Opaque:
    """Not a tensor: the restricted unpickler must refuse to rebuild it."""


def test_refuses_pickles_that_are_not_plain_tensors(original, tmp_path):
    root, sd = original
    path = _write_pt(tmp_path, {"blip.text_proj.bias": torch.zeros(256), "obj": _Opaque()})
    with pytest.raises(ImageRewardConversionError, match=r"weights_only=True"):
        convert(path, root / "med_config.json", root / "bert", tmp_path / "out", vision=VIT)


def test_vocab_mismatch_and_cli_errors(original, tmp_path, capsys):
    root, _ = original
    med = json.loads((root / "med_config.json").read_text())
    (tmp_path / "med.json").write_text(json.dumps(dict(med, vocab_size=30524)))
    with pytest.raises(ImageRewardConversionError, match=f"has {len(WORDS) + 2} tokens.*vocab_size 30524"):
        convert(root / "ImageReward.pt", tmp_path / "med.json", root / "bert", tmp_path / "out", vision=VIT)
    # the command line converts ViT-L/16 checkpoints only: a tiny one is refused with a message, no traceback
    args = [
        "--checkpoint",
        str(root / "ImageReward.pt"),
        "--med-config",
        str(root / "med_config.json"),
        "--tokenizer",
        str(root / "bert"),
        "--out",
        str(tmp_path / "cli"),
    ]
    with pytest.raises(SystemExit, match="error: the checkpoint does not match ImageReward's model"):
        main(args)
    assert not (tmp_path / "cli").exists()


def test_write_is_atomic_and_overwrite_is_explicit(original, tmp_path, monkeypatch):
    import safetensors.torch

    root, _ = original
    args = (root / "ImageReward.pt", root / "med_config.json", root / "bert")
    out = tmp_path / "ir"
    real_save = safetensors.torch.save_file
    calls = []

    def fail_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        convert(*args, out, vision=VIT)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one is left
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    convert(*args, out, vision=VIT)
    with pytest.raises(ImageRewardConversionError, match="not empty.*--overwrite"):
        convert(*args, out, vision=VIT)
    (out / "stale.txt").write_text("x")
    convert(*args, out, vision=VIT, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir"]
