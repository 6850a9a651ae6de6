"""COCO-style instance annotations from local files: image records, instance masks rasterised
from polygons (or uncompressed RLE), captions from a captions JSON or made from category names."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._files import RewardFilesError


class CocoInstances:
    """Images that have at least one non-crowd instance, each with a caption and its masks."""

    def __init__(self, instances_json: str, images_dir: str, captions_json: str | None = None):
        ann_path, self.images_dir = Path(instances_json).expanduser(), Path(images_dir).expanduser()
        if not ann_path.is_file():
            raise RewardFilesError(
                f"COCO instances JSON {ann_path} does not exist (e.g. annotations/instances_train2017.json)"
            )
        if not self.images_dir.is_dir():
            raise RewardFilesError(f"COCO images folder {self.images_dir} does not exist (e.g. train2017/)")
        data = json.loads(ann_path.read_text())
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{ann_path} has no '{key}' list; is it a COCO instances file?")
        self.category_names = {c["id"]: c["name"] for c in data["categories"]}
        anns = defaultdict(list)
        for a in data["annotations"]:
            if not a.get("iscrowd", 0):
                anns[a["image_id"]].append(a)
        captions = {}
        if captions_json is not None:
            cap_path = Path(captions_json).expanduser()
            if not cap_path.is_file():
                raise RewardFilesError(
                    f"COCO captions JSON {cap_path} does not exist (e.g. annotations/captions_train2017.json)"
                )
            for c in json.loads(cap_path.read_text())["annotations"]:
                captions.setdefault(c["image_id"], c["caption"].strip())
        self.records = []
        for im in data["images"]:
            if anns.get(im["id"]):
                cap = captions.get(im["id"]) or self._caption_from_categories(anns[im["id"]])
                self.records.append({"image": im, "annotations": anns[im["id"]], "caption": cap})
        if not self.records:
            raise ValueError(f"{ann_path} has no image with a non-crowd instance annotation")
        # A caption names its record; on duplicate captions the first image wins.
        self.by_caption = {}
        for i, r in enumerate(self.records):
            self.by_caption.setdefault(r["caption"], i)

    def _caption_from_categories(self, anns) -> str:
        names = sorted({self.category_names.get(a["category_id"], "object") for a in anns})
        return "a photo of " + ", ".join(names)

    def __len__(self) -> int:
        return len(self.records)

    def index_of(self, caption: str) -> int:
        if caption not in self.by_caption:
            raise KeyError(
                f"caption {caption!r} is not in the COCO set; the segmentation reward scores only "
                "images generated from its own captions/images (use its sample_batch)"
            )
        return self.by_caption[caption]

    def image(self, i: int, size: int) -> torch.Tensor:
        """Record i's image as (3, size, size) in [-1, 1]: shorter side resized to ``size`` and
        centre-cropped, as the training data loader does (data.center_crop)."""
        from PIL import Image

        path = self.images_dir / self.records[i]["image"]["file_name"]
        if not path.is_file():
            raise RewardFilesError(f"COCO image {path} is missing from {self.images_dir}")
        with Image.open(path) as im:
            (nw, nh), (left, top) = _geometry(im.width, im.height, size)
            im = im.convert("RGB").resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0

    def target(self, i: int, size: int) -> dict[str, torch.Tensor]:
        """Mask R-CNN training target (boxes, labels, masks) for record i in the same geometry as
        :meth:`image`. Instances that vanish at this size are dropped (possibly all of them:
        Mask R-CNN takes an image without boxes as a negative example)."""
        rec = self.records[i]
        h0, w0 = rec["image"]["height"], rec["image"]["width"]
        (nw, nh), (left, top) = _geometry(w0, h0, size)
        masks = torch.stack([torch.from_numpy(rasterize(a["segmentation"], h0, w0)) for a in rec["annotations"]])
        masks = F.interpolate(masks[:, None].float(), size=(nh, nw), mode="nearest")[:, 0].to(torch.uint8)
        masks = masks[:, top : top + size, left : left + size]
        keep = masks.flatten(1).any(1).bool()
        masks = masks[keep]
        labels = torch.tensor([a["category_id"] for a in rec["annotations"]], dtype=torch.int64)[keep]
        boxes = torch.stack([_mask_box(m) for m in masks]) if len(masks) else torch.zeros(0, 4)
        return {"boxes": boxes, "labels": labels, "masks": masks}


def _geometry(w: int, h: int, size: int):
    """((new_w, new_h), (left, top)): shorter side to ``size``, then a centred size x size crop."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return (nw, nh), ((nw - size) // 2, (nh - size) // 2)


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def rasterize(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygon list or uncompressed RLE) as a (height, width) uint8 mask."""
    if isinstance(segmentation, list):
        from PIL import Image, ImageDraw

        im = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(im)
        for poly in segmentation:
            if len(poly) >= 6:
                draw.polygon([(float(poly[k]), float(poly[k + 1])) for k in range(0, len(poly), 2)], fill=1)
        return np.asarray(im, dtype=np.uint8)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        flat = np.zeros(height * width, dtype=np.uint8)
        pos, val = 0, 0
        for n in segmentation["counts"]:
            flat[pos : pos + n] = val
            pos, val = pos + n, 1 - val
        return flat.reshape(width, height).T.copy()  # COCO RLE is column-major
    raise ValueError(
        "compressed-RLE segmentations need pycocotools; this reader takes polygons and "
        "uncompressed RLE (COCO's non-crowd instances are polygons)"
    )


def write_captions_jsonl(coco: CocoInstances, out: str) -> int:
    """captions.jsonl (file_name, caption) for the training folder loader; returns the count."""
    from hypersd_core.lora_formats import atomic_write_text

    lines = [json.dumps({"file_name": r["image"]["file_name"], "caption": r["caption"]}) for r in coco.records]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return len(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(
        description="Write captions.jsonl for a COCO images folder (feedback stage, source: data)"
    )
    ap.add_argument("instances_json")
    ap.add_argument("images_dir")
    ap.add_argument("--captions-json")
    ap.add_argument("--out", help="default: <images_dir>/captions.jsonl")
    a = ap.parse_args()
    n = write_captions_jsonl(
        CocoInstances(a.instances_json, a.images_dir, a.captions_json),
        a.out or str(Path(a.images_dir) / "captions.jsonl"),
    )
    print(f"wrote {n} captions")
