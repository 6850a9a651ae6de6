"""Batch sources with a resumable position: each process draws its own share in a seeded order,
and ``state`` / ``load_state`` restore exactly where a killed run stopped."""

from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..batch import Batch
from .records import DataError, RecordList, decode_image


class BatchSource:
    def next_batch(self) -> Batch:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        raise NotImplementedError

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


class DigitSource(BatchSource):
    """The embedded default's data: training-split digits with a random caption template each."""

    def __init__(self, conditioner, batch_size: int, resolution: int, device, seed: int = 0):
        from ..digits import load_digit_splits, random_captions

        self.train, _ = load_digit_splits(resolution)
        self.conditioner, self.batch_size, self.device = conditioner, batch_size, device
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        self._captions = random_captions

    def next_batch(self) -> Batch:
        idx = torch.randint(0, len(self.train.labels), (self.batch_size,), generator=self.gen)
        prompts = self._captions(self.train.labels[idx], self.rng)
        cond, added = self.conditioner.encode(prompts)
        return Batch(self.train.images[idx].to(self.device), cond, prompts, added)

    def state(self):
        return {"data.gen": self.gen.get_state()}, {"rng": _jsonable(self.rng.getstate())}

    def load_state(self, tensors, meta):
        self.gen.set_state(tensors["data.gen"])
        self.rng.setstate(_tupled(meta["rng"]))


class RecordSource(BatchSource):
    """Images + captions from records (folder / webdataset): a seeded permutation per epoch,
    process r of w taking every w-th sample; unreadable samples are skipped and counted."""

    def __init__(self, records: RecordList, cfg, model, conditioner, device, rank: int = 0, world: int = 1, seed: int = 0):
        self.records, self.cfg, self.model, self.conditioner = records.records, cfg, model, conditioner
        self.device, self.rank, self.world, self.seed = device, rank, world, seed
        self.resolution = cfg.resolution or model.resolution
        self.epoch, self.cursor = 0, 0
        self.bad: dict[str, int] = dict(records.skipped)
        self.bad_keys: set[str] = set()
        self.seen = 0
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        if len(self.records) < world:
            raise DataError(f"{len(self.records)} samples cannot feed {world} processes")
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        perm = np.random.RandomState((self.seed + 7919 * self.epoch) % 2**32).permutation(len(self.records))
        return perm[self.rank::self.world]

    def _next_index(self) -> int:
        if self.cursor >= len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        i = int(self._order[self.cursor])
        self.cursor += 1
        return i

    def _pixels(self, rec) -> torch.Tensor:
        from PIL import Image

        img = decode_image(rec.read(), "L" if self.model.channels == 1 and self.model.vae is None else "RGB")
        r = self.resolution
        w, h = img.size
        scale = r / min(w, h)
        img = img.resize((max(r, round(w * scale)), max(r, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = ((w - r) // 2, (h - r) // 2) if self.cfg.center_crop else (0, 0)
        img = img.crop((left, top, left + r, top + r))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        if self.cfg.random_flip and random.random() < 0.5:
            x = x.flip(-1)
        return x

    @torch.no_grad()
    def _model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        if vae is None:
            return pixels
        p = pixels[None].to(self.device, vae.dtype)
        return (vae.encode(p).latent_dist.mode() * self.model.scaling_factor)[0].float().cpu()

    def _cache_path(self, rec) -> Path:
        h = hashlib.sha1(f"{rec.key}|{self.resolution}|{self.model.base_model}".encode()).hexdigest()
        return self.cache / h[:2] / f"{h}.safetensors"

    def _sample(self, rec) -> dict:
        """{"x0", and cached text tensors when a cache is used} for one record."""
        if self.cache is None:
            return {"x0": self._model_space(self._pixels(rec))}
        from safetensors.torch import load_file, save_file

        from hypersd_core.lora_formats import atomic_write

        path = self._cache_path(rec)
        if path.is_file():
            return load_file(str(path))
        item = {"x0": self._model_space(self._pixels(rec))}
        h, pooled = self.conditioner._encode_raw([rec.caption])
        item["text.hidden"] = h[0].float().cpu()
        if pooled is not None:
            item["text.pooled"] = pooled[0].float().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(path), lambda tmp: save_file({k: v.contiguous() for k, v in item.items()}, tmp))
        return item

    def next_batch(self) -> Batch:
        items, prompts = [], []
        while len(items) < self.cfg.batch_size:
            rec = self.records[self._next_index()]
            self.seen += 1
            if rec.key in self.bad_keys:
                continue
            try:
                items.append(self._sample(rec))
                prompts.append(rec.caption)
            except Exception as e:  # unreadable / corrupt / missing file: skip (for good) and count once
                reason = type(e).__name__
                self.bad[reason] = self.bad.get(reason, 0) + 1
                self.bad_keys.add(rec.key)
                warnings.warn(f"skipping unreadable sample {rec.key}: {e}", stacklevel=2)
                if len(self.bad_keys) == len(self.records) or (
                        self.seen >= 10 and len(self.bad_keys) / min(self.seen, len(self.records)) > self.cfg.max_bad_fraction):
                    n_bad = len(self.bad_keys)
                    raise DataError(f"{n_bad} of {self.seen} samples were unreadable ({self.bad}); fix the data or raise "
                                    "data.max_bad_fraction") from e
        x0 = torch.stack([it["x0"] for it in items]).to(self.device)
        if self.cache is not None:
            hidden = torch.stack([it["text.hidden"] for it in items])
            pooled = torch.stack([it["text.pooled"] for it in items]) if "text.pooled" in items[0] else None
            cond, added = self.conditioner.pack(hidden, pooled)
        else:
            cond, added = self.conditioner.encode(prompts)
        return Batch(x0, cond, prompts, added)

    def state(self):
        return {}, {"epoch": self.epoch, "cursor": self.cursor, "bad": self.bad, "seen": self.seen,
                    "bad_keys": sorted(self.bad_keys)}

    def load_state(self, tensors, meta):
        self.epoch, self.cursor, self.bad, self.seen = meta["epoch"], meta["cursor"], dict(meta["bad"]), meta["seen"]
        self.bad_keys = set(meta.get("bad_keys", []))
        self._order = self._permutation()

    def stats(self) -> dict:
        return {"bad_samples": dict(self.bad), "seen": self.seen, "records": len(self.records)}


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
