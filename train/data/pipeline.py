"""The worker side of the data pipeline: which samples make batch b of a process, and decoding,
cropping and captioning them in DataLoader worker processes.

Batches are numbered per process (b = 0, 1, ...). Worker w of W produces batches b = start + w,
start + w + W, ...; torch's DataLoader takes them from its workers in turn, so batches arrive in
order b whatever the number of workers, and a run resumes at "the next b" exactly.

- Listed records (folder, tar shards read by offset, Hugging Face datasets): every epoch a seeded
  shuffle within each aspect-ratio bucket, cut into batches, the batch order shuffled; process r
  of w takes batches r, r + w, ... of each epoch.
- Streaming tar shards (``data.streaming``, through ``webdataset``): every epoch a seeded shuffle
  of the shard list; process r takes shards r::w, worker k of its W workers shards k::W; batches
  are consecutive samples (no buckets). A worker's position (epoch, shard, sample) travels with
  each batch, so a resumed worker starts where its last consumed batch ended.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass

import numpy as np
import torch

IDS = ("orig_h", "orig_w", "crop_top", "crop_left", "target_h", "target_w")


# -- aspect-ratio buckets -----------------------------------------------------------------------
def make_buckets(resolution: int, step: int = 64, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """(height, width) pairs with sides multiples of ``step`` and about resolution² pixels,
    aspect ratios up to ``max_ratio``: SDXL's bucket list for resolution 1024 and step 64."""
    area, out = resolution * resolution, set()
    h = step
    while h <= resolution * max_ratio:
        w = int(area / h) // step * step
        if w >= step and max(h / w, w / h) <= max_ratio:
            out.add((h, w))
        h += step
    return sorted(out, key=lambda hw: hw[0] / hw[1])


def nearest_bucket(size_hw: tuple[int, int], buckets: list[tuple[int, int]]) -> int:
    ratio = np.log(size_hw[0] / size_hw[1])
    return int(np.argmin([abs(np.log(h / w) - ratio) for h, w in buckets]))


# -- decode, crop, caption ----------------------------------------------------------------------
@dataclass
class Prep:
    """Decode an image and resize + crop it to its target size; SDXL's size conditioning with it."""

    mode: str  # "L" or "RGB"
    center_crop: bool = True
    random_flip: bool = False

    def __call__(self, data: bytes, target_hw: tuple[int, int], rng: random.Random):
        from PIL import Image

        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert(self.mode)
        w, h = img.size
        th, tw = target_hw
        scale = max(th / h, tw / w)
        rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
        img = img.resize((rw, rh), Image.BICUBIC)
        if self.center_crop:
            top, left = (rh - th) // 2, (rw - tw) // 2
        else:
            top, left = rng.randint(0, rh - th), rng.randint(0, rw - tw)
        img = img.crop((left, top, left + tw, top + th))
        x = torch.from_numpy(np.array(img, dtype=np.uint8))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        flip = self.random_flip and rng.random() < 0.5
        if flip:
            x = x.flip(-1)
        return x, (h, w, top, left, th, tw), flip


def content_key(data: bytes, ids: tuple, flip: bool, extra: str) -> str:
    """Content address of a prepared sample: the image bytes, the crop and the encoder."""
    h = hashlib.sha1(data)
    h.update(f"|{ids}|{int(flip)}|{extra}".encode())
    return h.hexdigest()


def collate(samples: list, bad: list, b: int, position=None) -> dict:
    """Samples of one bucket -> a batch dict (uint8 pixels; the trainer converts on the device)."""
    out = {"b": b, "bad": bad, "position": position, "n": len(samples)}
    if samples:
        out["pixels"] = torch.stack([s[0] for s in samples])
        out["time_ids"] = torch.tensor([s[1] for s in samples], dtype=torch.float32)
        out["captions"] = [s[2] for s in samples]
        out["keys"] = [s[3] for s in samples]
    return out


# -- listed records -------------------------------------------------------------------------------
class BatchPlan:
    """Which records make batch b of process ``rank``: seeded per epoch, bucketed, split by rank."""

    def __init__(self, bucket_of: np.ndarray, batch_size: int, rank: int, world: int, seed: int):
        self.bucket_of, self.batch_size = bucket_of, batch_size
        self.rank, self.world, self.seed = rank, world, seed
        self._cache: tuple[int, list] | None = None
        self.per_epoch = len(self._epoch(0)) // world
        if self.per_epoch < 1:
            raise ValueError(f"{len(bucket_of)} samples make fewer batches than the {world} processes need")

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != epoch:
            rs = np.random.RandomState((self.seed + 7919 * epoch) % 2**32)
            batches = []
            for bucket in np.unique(self.bucket_of):
                idx = np.flatnonzero(self.bucket_of == bucket)
                idx = idx[rs.permutation(len(idx))]
                batches += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
            order = rs.permutation(len(batches))
            self._cache = (epoch, [batches[i] for i in order])
        return self._cache[1]

    def batch(self, b: int) -> tuple[int, np.ndarray]:
        epoch, i = divmod(b, self.per_epoch)
        return epoch, self._epoch(epoch)[self.rank + i * self.world]


class ListedBatches(torch.utils.data.IterableDataset):
    def __init__(
        self,
        records,
        plan: BatchPlan,
        targets: list[tuple[int, int]],
        bucket_of,
        prep: Prep,
        table,
        seed: int,
        start: int,
        cache_extra: str,
    ):
        self.records, self.plan, self.targets, self.bucket_of = records, plan, targets, bucket_of
        self.prep, self.table, self.seed, self.start, self.cache_extra = prep, table, seed, start, cache_extra

    def load(self, b: int) -> dict:
        epoch, idx = self.plan.batch(b)
        rng = random.Random(hash((self.seed, self.plan.rank, b)))
        samples, bad = [], []
        for i in idx:
            rec = self.records[int(i)]
            try:
                data = rec.read(self.table)
                x, ids, flip = self.prep(data, self.targets[int(self.bucket_of[i])], rng)
            except Exception as e:  # unreadable / corrupt / missing: skipped and counted
                bad.append((rec.key, type(e).__name__, str(e)[:200]))
                continue
            samples.append((x, ids, rec.caption, content_key(data, ids, flip, self.cache_extra)))
        return collate(samples, bad, b)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start + w
        while True:
            yield self.load(b)
            b += n


# -- streaming tar shards (webdataset) ------------------------------------------------------------
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class StreamingBatches(torch.utils.data.IterableDataset):
    """Batches of consecutive samples from this process's shards, read with webdataset's tar
    iterator. ``positions[w]`` = (epoch, shard index, samples of that shard already used) where
    worker w starts (from the last batch of w the trainer consumed)."""

    def __init__(
        self,
        shards: list[str],
        batch_size: int,
        resolution: int,
        prep: Prep,
        rank: int,
        world: int,
        seed: int,
        workers: int,
        start: int,
        positions: dict,
        cache_extra: str,
    ):
        self.shards, self.batch_size, self.resolution, self.prep = shards, batch_size, resolution, prep
        self.rank, self.world, self.seed, self.workers = rank, world, seed, max(1, workers)
        self.start, self.positions, self.cache_extra = start, positions, cache_extra

    def worker_shards(self, epoch: int, w: int) -> list[str]:
        order = np.random.RandomState((self.seed + 7919 * epoch) % 2**32).permutation(len(self.shards))
        mine = [self.shards[i] for i in order[self.rank :: self.world]]
        return mine[w :: self.workers]

    @staticmethod
    def samples(shard: str):
        """(key, image bytes or None, caption or None) per sample of one tar shard, in order."""
        import json

        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        for s in group_by_keys(tar_file_expander(url_opener([{"url": shard}]))):
            img = next((s[e] for e in IMAGE_EXTS if e in s), None)
            cap = s["txt"].decode("utf-8", "replace").strip() if "txt" in s else None
            if cap is None and "json" in s:
                try:
                    meta = json.loads(s["json"])
                    cap = next((str(meta[c]) for c in ("text", "caption", "prompt") if c in meta), None)
                except (ValueError, TypeError):
                    cap = None
            yield s["__key__"], img, cap

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        b = self.start + (info.id if info is not None else 0)
        w = b % self.workers  # the stream this worker continues (the DataLoader asks worker 0 first)
        epoch, shard_i, skip = self.positions.get(str(w), (0, 0, 0))
        target = (self.resolution, self.resolution)
        samples, bad = [], []
        rng = random.Random(hash((self.seed, self.rank, w, epoch, shard_i, skip)))
        while True:
            shards = self.worker_shards(epoch, w)
            while shard_i < len(shards):
                for n, (key, img, cap) in enumerate(self.samples(shards[shard_i])):
                    if n < skip:
                        continue
                    if img is None or cap is None:
                        bad.append((key, "no image" if img is None else "no caption", ""))
                    else:
                        try:
                            x, ids, flip = self.prep(img, target, rng)
                            samples.append((x, ids, cap, content_key(img, ids, flip, self.cache_extra)))
                        except Exception as e:
                            bad.append((key, type(e).__name__, str(e)[:200]))
                    if len(samples) == self.batch_size:
                        yield collate(samples, bad, b, (w, epoch, shard_i, n + 1))
                        samples, bad, b = [], [], b + self.workers
                skip, shard_i = 0, shard_i + 1
            epoch, shard_i = epoch + 1, 0
            if not self.worker_shards(epoch, w):
                raise ValueError(f"worker {w} has no shards")
