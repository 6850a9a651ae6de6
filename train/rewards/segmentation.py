"""Perceptual feedback from instance segmentation (Hyper-SD / UniFL): a frozen torchvision Mask
R-CNN scores how well the instances of a real COCO image survive in the student's one-step
reconstruction of it. Reward = -(weighted Mask R-CNN training losses against the ground-truth
boxes, labels and masks), so gradients flow through the detector into the image.

It pairs with the feedback stage's ``source: data`` mode: train on a folder of the COCO images
with their captions (``python -m train.rewards.coco`` writes the captions.jsonl); the stage
noises each batch image, denoises it once with the student, decodes it and calls this reward
with the batch captions, which name the ground truth (same resize + centre crop as the loader).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hypersd_core.rewards import to_rgb, to_unit_range

from ._files import freeze, load_safetensors
from .coco import CocoInstances

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
HINT = (
    "Give weights = a torchvision Mask R-CNN state dict as .safetensors (e.g. maskrcnn_resnet50_fpn COCO "
    "weights converted from .pth), plus instances_json and images_dir of a COCO-style set."
)


def build_maskrcnn(
    backbone: str = "resnet50", num_classes: int = 91, min_size: int = 800, max_size: int = 1333, **detector_kwargs
):
    """An uninitialised torchvision Mask R-CNN with a ResNet-FPN backbone (no download); extra
    keyword arguments go to torchvision's ``MaskRCNN`` (e.g. fewer proposals for speed)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    bb = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=0)
    return MaskRCNN(bb, num_classes=num_classes, min_size=min_size, max_size=max_size, **detector_kwargs)


class SegmentationReward(nn.Module):
    """-(weighted Mask R-CNN losses) of each image against its caption's ground-truth instances."""

    def __init__(self, detector: nn.Module, coco: CocoInstances, loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.detector = freeze(detector)
        self.coco = coco
        self.loss_weights = {k: 1.0 for k in LOSS_KEYS} | dict(loss_weights or {})
        unknown = set(self.loss_weights) - set(LOSS_KEYS)
        if unknown:
            raise ValueError(f"unknown segmentation loss weights {sorted(unknown)}; choose from {LOSS_KEYS}")

    @classmethod
    def from_files(
        cls,
        weights: str,
        instances_json: str,
        images_dir: str,
        captions_json: str | None = None,
        backbone: str = "resnet50",
        num_classes: int = 91,
        min_size: int = 800,
        max_size: int = 1333,
        loss_weights: dict[str, float] | None = None,
        detector_kwargs: dict | None = None,
        device=None,
    ) -> "SegmentationReward":
        sd = load_safetensors(weights, "segmentation reward detector", HINT)
        detector = build_maskrcnn(backbone, num_classes, min_size, max_size, **(detector_kwargs or {}))
        fit = f"{weights} does not fit a Mask R-CNN with a {backbone}-FPN backbone and {num_classes} classes"
        try:
            missing, unexpected = detector.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(
                f"{fit} ({str(e).splitlines()[1].strip()}); set backbone/num_classes to match the file"
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"{fit}: {len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]}); set backbone/num_classes to match the file"
            )
        reward = cls(detector, CocoInstances(instances_json, images_dir, captions_json), loss_weights)
        return reward.to(device) if device is not None else reward

    def sample_batch(self, batch: int, size: int, generator: torch.Generator | None = None):
        """(real images (B, 3, size, size) in [-1, 1], their captions) drawn at random."""
        idx = torch.randint(0, len(self.coco), (batch,), generator=generator).tolist()
        images = torch.stack([self.coco.image(i, size) for i in idx])
        return images, [self.coco.records[i]["caption"] for i in idx]

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        x = to_rgb(to_unit_range(images.float()))
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"the segmentation reward takes square images (as the data loader crops them), got {tuple(x.shape[-2:])}"
            )
        size = x.shape[-1]
        rewards = []
        was_training = self.detector.training
        self.detector.train()  # the losses need train mode; frozen BN and frozen weights keep it fixed
        try:
            for img, prompt in zip(x, prompts):
                target = self.coco.target(self.coco.index_of(prompt), size)
                target = {k: v.to(img.device) for k, v in target.items()}
                losses = self.detector([img], [target])
                rewards.append(-sum(self.loss_weights[k] * losses[k] for k in LOSS_KEYS))
        finally:
            self.detector.train(was_training)
        return torch.stack(rewards).float()
