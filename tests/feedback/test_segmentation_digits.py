"""The perceptual (Mask R-CNN) reward on a tiny COCO-style folder, and the embedded digit reward."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from train.rewards import build_reward
from train.rewards._files import RewardFilesError
from train.rewards.coco import CocoInstances, rasterize
from train.rewards.digits import DigitReward, cleanliness, digit_of


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    rng = np.random.RandomState(0)
    images, anns = [], []
    for i in range(2):
        Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 40, "width": 48})
        anns.append(
            {
                "id": 10 + i,
                "image_id": i + 1,
                "category_id": 1 + i,
                "iscrowd": 0,
                "segmentation": [[4, 4, 30, 4, 30, 30, 4, 30]],
                "bbox": [4, 4, 26, 26],
            }
        )
    anns.append(
        {
            "id": 99,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 1,
            "segmentation": {"counts": [5, 5], "size": [40, 48]},
            "bbox": [0, 0, 1, 1],
        }
    )
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (root / "instances.json").write_text(json.dumps(data))
    (root / "captions.json").write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "a cat on a mat"}]}))
    return root


def test_coco_reader(coco_folder):
    coco = CocoInstances(
        str(coco_folder / "instances.json"), str(coco_folder / "images"), str(coco_folder / "captions.json")
    )
    assert [r["caption"] for r in coco.records] == ["a cat on a mat", "a photo of dog"]  # crowd skipped
    t = coco.target(coco.index_of("a photo of dog"), 20)  # 40x48 -> 20x24, centre crop 20x20 (left 2)
    assert t["labels"].tolist() == [2] and t["masks"].shape == (1, 20, 20)
    assert t["boxes"][0].tolist() == pytest.approx([0, 2, 13, 15], abs=1)


def test_captions_jsonl_for_the_folder_loader(coco_folder, tmp_path):
    from train.rewards.coco import write_captions_jsonl

    coco = CocoInstances(
        str(coco_folder / "instances.json"), str(coco_folder / "images"), str(coco_folder / "captions.json")
    )
    out = tmp_path / "captions.jsonl"
    assert write_captions_jsonl(coco, str(out)) == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"file_name": "0.png", "caption": "a cat on a mat"},
        {"file_name": "1.png", "caption": "a photo of dog"},
    ]
    assert coco.image(0, 16).shape == (3, 16, 16)
    with pytest.raises(KeyError, match="not in the COCO set"):
        coco.index_of("a unicorn")
    with pytest.raises(RewardFilesError, match="instances JSON"):
        CocoInstances(str(coco_folder / "missing.json"), str(coco_folder / "images"))


def test_rasterize_polygon_and_rle():
    m = rasterize([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)
    assert m.shape == (5, 6) and m[2, 2] == 1 and m[0, 0] == 0
    rle = rasterize({"counts": [2, 3, 5], "size": [2, 5]}, 2, 5)  # column-major: pixels 2..4 set
    assert rle.T.reshape(-1).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]


def test_segmentation_reward_from_files_backprops(tmp_path, coco_folder):
    from train.rewards.segmentation import build_maskrcnn

    torch.manual_seed(0)
    small = dict(rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=16, box_batch_size_per_image=16)
    det = build_maskrcnn("resnet18", num_classes=3, min_size=32, max_size=32, **small)
    save_file({k: v.contiguous() for k, v in det.state_dict().items()}, str(tmp_path / "det.safetensors"))
    spec = {
        "name": "segmentation",
        "weights": str(tmp_path / "det.safetensors"),
        "instances_json": str(coco_folder / "instances.json"),
        "images_dir": str(coco_folder / "images"),
        "backbone": "resnet18",
        "num_classes": 3,
        "min_size": 32,
        "max_size": 32,
        "detector_kwargs": small,
    }
    reward = build_reward(spec)
    images, prompts = reward.sample_batch(2, 32, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    x = images.clone().requires_grad_(True)
    r = reward(x, prompts)
    assert r.shape == (2,) and torch.isfinite(r).all() and (r < 0).all()
    r.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters())
    assert not reward.detector.training  # restored after scoring
    with pytest.raises(ValueError, match="does not fit a Mask R-CNN"):
        build_reward(spec | {"num_classes": 5})


def test_digit_of_parses_every_caption_template():
    from train.digits import all_captions

    for cap, d in all_captions():
        assert digit_of(cap) == d
    with pytest.raises(ValueError, match="no digit"):
        digit_of("a cat")


def test_digit_reward_prefers_captioned_digit_and_clean_images():
    from train.digits import load_digit_splits
    from hypersd_models.classifier import DigitClassifier

    torch.manual_seed(0)
    train, _ = load_digit_splits(16)
    clf = DigitClassifier(resolution=16)
    opt = torch.optim.Adam(clf.parameters(), 3e-3)
    for _ in range(60):  # a few quick steps: enough to prefer the right digit on training images
        idx = torch.randint(0, len(train.labels), (64,))
        loss = torch.nn.functional.cross_entropy(clf(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    reward = DigitReward(clf, clean_weight=1.0)
    x, y = train.images[:32], train.labels[:32]
    right = reward(x, [f"a handwritten digit {int(d)}" for d in y])
    wrong = reward(x, [f"a handwritten digit {(int(d) + 5) % 10}" for d in y])
    assert right.mean() > wrong.mean()
    noisy = (x + 0.5 * torch.randn_like(x)).requires_grad_(True)
    assert cleanliness(noisy).mean() < cleanliness(x).mean()
    r = reward(noisy, [f"handwritten {d}" for d in y.tolist()])
    r.sum().backward()
    assert noisy.grad.abs().sum() > 0
