"""Reward models in train/rewards, on tiny random models saved to local folders: they load from
files, give (B,) rewards, pass gradients into the images, and name what is missing."""

import json

import pytest
import torch
from safetensors.torch import save_file

from train.rewards import build_reward, build_rewards
from train.rewards._files import RewardFilesError


def _mlp_state(in_dim):
    torch.manual_seed(0)
    dims = [(1024, in_dim), (128, 1024), (64, 128), (16, 64), (1, 16)]
    sd = {}
    for i, (o, n) in zip((0, 2, 4, 6, 7), dims):
        sd[f"layers.{i}.weight"] = torch.randn(o, n) / n**0.5
        sd[f"layers.{i}.bias"] = torch.zeros(o)
    return sd


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    save_file(_mlp_state(16), str(folder / "head.safetensors"))
    return folder


def _grad_check(reward, images, prompts):
    x = images.clone().requires_grad_(True)
    r = reward(x, prompts)
    assert r.shape == (len(prompts),) and torch.isfinite(r).all()
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters())  # the reward model itself stays frozen
    return r


def test_aesthetic_reward_loads_and_backprops(clip_folder):
    reward = build_reward(
        {"name": "aesthetic", "clip_path": str(clip_folder), "head_path": str(clip_folder / "head.safetensors")}
    )
    images = torch.rand(2, 3, 40, 48) * 2 - 1
    r = _grad_check(reward, images, ["a", "b"])
    assert not torch.allclose(r[0], r[1])


def test_aesthetic_reward_names_missing_files(tmp_path, clip_folder):
    with pytest.raises(RewardFilesError, match="no folder given.*clip_path"):
        build_reward({"name": "aesthetic", "clip_path": None, "head_path": None})
    with pytest.raises(RewardFilesError, match="does not exist"):
        build_reward({"name": "aesthetic", "clip_path": str(tmp_path / "nope"), "head_path": "h.safetensors"})
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(RewardFilesError, match="lacks model.safetensors.*pytorch_model.bin"):
        build_reward({"name": "aesthetic", "clip_path": str(tmp_path), "head_path": "h.safetensors"})
    with pytest.raises(RewardFilesError, match="not a .safetensors file"):
        build_reward({"name": "aesthetic", "clip_path": str(clip_folder), "head_path": str(tmp_path / "head.pth")})
    with pytest.raises(RewardFilesError, match="weights file .* does not exist"):
        build_reward({"name": "aesthetic", "clip_path": str(clip_folder), "head_path": str(tmp_path / "h.safetensors")})


def test_aesthetic_head_dimension_mismatch(tmp_path, clip_folder):
    save_file(_mlp_state(24), str(tmp_path / "head.safetensors"))
    with pytest.raises(ValueError, match="takes 24-d embeddings"):
        build_reward(
            {"name": "aesthetic", "clip_path": str(clip_folder), "head_path": str(tmp_path / "head.safetensors")}
        )


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    folder = tmp_path_factory.mktemp("imagereward")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "photo", "of"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BlipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            vocab_size=len(words),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        ),
        projection_dim=16,
        image_text_hidden_size=16,
    )
    BlipForImageTextRetrieval(cfg).save_pretrained(folder)
    save_file(_mlp_state(32), str(folder / "mlp.safetensors"))
    (folder / "imagereward.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "max_length": 8}))
    return folder


def test_imagereward_loads_and_depends_on_prompt(blip_folder):
    reward = build_reward({"name": "imagereward", "path": str(blip_folder)})
    images = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1) * 2 - 1
    r = _grad_check(reward, images, ["a red cat", "a photo of a dog"])
    assert not torch.allclose(r[0], r[1])  # same image, different prompts


def test_imagereward_names_missing_head(tmp_path, blip_folder):
    import shutil

    broken = tmp_path / "ir"
    shutil.copytree(blip_folder, broken)
    (broken / "mlp.safetensors").unlink()
    with pytest.raises(RewardFilesError, match="mlp.safetensors"):
        build_reward({"name": "imagereward", "path": str(broken)})


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown reward 'clipscore'"):
        build_reward("clipscore")
    with pytest.raises(ValueError, match="at least one reward"):
        build_rewards([])
