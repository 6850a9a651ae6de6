"""Batch sources with a resumable position: each process draws its own share in a seeded order,
and ``state`` / ``load_state`` restore exactly where a killed run stopped."""

from __future__ import annotations

import hashlib
import io
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..batch import Batch
from .records import DataError, RecordList


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
    """The embedded default's data: training-split digits with a random caption template each, drawn
    as the model's ``layout`` (train.digits.apply_layout)."""

    def __init__(self, conditioner, batch_size: int, resolution: int, device, seed: int = 0, layout: str = "digits"):
        from ..digits import apply_layout, load_digit_splits, random_captions

        self.train, _ = load_digit_splits(resolution)
        self.layout, self._apply_layout = layout, apply_layout
        self.conditioner, self.batch_size, self.device = conditioner, batch_size, device
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        self._captions = random_captions

    def next_batch(self) -> Batch:
        idx = torch.randint(0, len(self.train.labels), (self.batch_size,), generator=self.gen)
        prompts = self._captions(self.train.labels[idx], self.rng)
        cond, added = self.conditioner.encode(prompts)
        images = self._apply_layout(self.train.images[idx], self.layout, self.gen)
        return Batch(images.to(self.device), cond, prompts, added)

    def state(self):
        return {"data.gen": self.gen.get_state()}, {"rng": _jsonable(self.rng.getstate())}

    def load_state(self, tensors, meta):
        self.gen.set_state(tensors["data.gen"])
        self.rng.setstate(_tupled(meta["rng"]))


class RecordSource(BatchSource):
    """Images + captions (listed records, or streaming tar shards) through a torch DataLoader:
    worker processes decode, crop and caption (train/data/pipeline.py), pinned memory on CUDA;
    the VAE encodes each batch on the device, with a content-addressed latent cache. Unreadable
    samples are skipped (their batch comes out smaller) and counted."""

    def __init__(
        self,
        records: RecordList | None,
        cfg,
        model,
        conditioner,
        device,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        table=None,
        shards: list[str] | None = None,
    ):
        from .pipeline import Prep, make_buckets, nearest_bucket

        self.cfg, self.model, self.conditioner, self.device = cfg, model, conditioner, torch.device(device)
        self.rank, self.world, self.seed, self.table, self.shards = rank, world, seed, table, shards
        self.records = records.records if records is not None else []
        self.resolution = cfg.resolution or model.resolution
        self.bad: dict[str, int] = dict(records.skipped) if records is not None else {}
        self.bad_keys: set[str] = set()
        self.seen, self.consumed, self.positions = 0, 0, {}
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        self.prep = Prep("L" if model.channels == 1 and model.vae is None else "RGB", cfg.center_crop, cfg.random_flip)
        self.cache_extra = f"{model.base_model}|{getattr(model, 'scaling_factor', 1.0)}|{model.vae is not None}"
        self._iter = None
        if shards is not None:
            if len(shards) < world:
                raise DataError(
                    f"{len(shards)} shard(s) cannot feed {world} processes: streaming needs a shard per process"
                )
            per_rank = len(shards) // world
            self.workers = min(cfg.num_workers, per_rank)
            if self.workers < cfg.num_workers:
                warnings.warn(
                    f"data.num_workers={cfg.num_workers} > {per_rank} shard(s) per process; using {self.workers}",
                    stacklevel=2,
                )
            return
        if len(self.records) < world:
            raise DataError(f"{len(self.records)} samples cannot feed {world} processes")
        self.workers = cfg.num_workers
        if cfg.buckets:
            self.targets = make_buckets(self.resolution, cfg.bucket_step)
            sizes = [_image_size(r, table) for r in self.records]
            self.bucket_of = np.array([nearest_bucket(s, self.targets) if s else 0 for s in sizes])
        else:
            self.targets = [(self.resolution, self.resolution)]
            self.bucket_of = np.zeros(len(self.records), dtype=np.int64)
        from .pipeline import BatchPlan

        self.plan = BatchPlan(self.bucket_of, cfg.batch_size, rank, world, seed)

    # -- the DataLoader -------------------------------------------------------------------------
    def _loader(self):
        from .pipeline import ListedBatches, StreamingBatches

        if self.shards is not None:
            ds = StreamingBatches(
                self.shards,
                self.cfg.batch_size,
                self.resolution,
                self.prep,
                self.rank,
                self.world,
                self.seed,
                self.workers,
                self.consumed,
                dict(self.positions),
                self.cache_extra,
            )
        else:
            ds = ListedBatches(
                self.records,
                self.plan,
                self.targets,
                self.bucket_of,
                self.prep,
                self.table,
                self.seed,
                self.consumed,
                self.cache_extra,
            )
        kw = {
            "num_workers": self.workers,
            "batch_size": None,
            "pin_memory": self.device.type == "cuda" and self.cfg.pin_memory,
        }
        if self.workers:
            kw.update(prefetch_factor=self.cfg.prefetch_factor, persistent_workers=False)
        return iter(torch.utils.data.DataLoader(ds, **kw))

    def next_raw(self) -> dict:
        """The next non-empty decoded batch (uint8 pixels, captions, time ids, cache keys)."""
        if self._iter is None:
            self._iter = self._loader()
        while True:
            item = next(self._iter)
            self.consumed = item["b"] + 1
            if item["position"] is not None:
                w, *pos = item["position"]
                self.positions[str(w)] = pos
            self.seen += item["n"] + len(item["bad"])
            for key, reason, msg in item["bad"]:
                if key not in self.bad_keys:
                    self.bad_keys.add(key)
                    self.bad[reason] = self.bad.get(reason, 0) + 1
                    if msg:
                        warnings.warn(f"skipping unreadable sample {key}: {msg}", stacklevel=2)
            n_bad = len(self.bad_keys)
            total = len(self.records) or self.seen
            if n_bad and (
                n_bad >= total or (self.seen >= 10 and n_bad / min(self.seen, total) > self.cfg.max_bad_fraction)
            ):
                raise DataError(
                    f"{n_bad} of {self.seen} samples were unreadable ({self.bad}); fix the data or raise "
                    "data.max_bad_fraction"
                )
            if item["n"]:
                return item

    # -- model space ----------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, non_blocking=True).float() / 127.5 - 1.0
        vae = self.model.vae
        if vae is None:
            return x
        return (vae.encode(x.to(vae.dtype)).latent_dist.mode() * self.model.scaling_factor).float()

    def _cache_path(self, key: str) -> Path:
        return self.cache / key[:2] / f"{key}.safetensors"

    def _model_space(self, item: dict) -> torch.Tensor:
        """Latents for the batch: cached ones loaded, the rest encoded in one VAE call and cached."""
        if self.cache is None:
            return self._encode_images(item["pixels"])
        from safetensors.torch import load_file, save_file

        from hypersd_core.lora_formats import atomic_write

        out: list = [None] * item["n"]
        todo = []
        for i, key in enumerate(item["keys"]):
            path = self._cache_path(key)
            if path.is_file():
                out[i] = load_file(str(path))["x0"].to(self.device)
            else:
                todo.append(i)
        if todo:
            fresh = self._encode_images(item["pixels"][todo])
            for j, i in enumerate(todo):
                out[i] = fresh[j]
                path = self._cache_path(item["keys"][i])
                path.parent.mkdir(parents=True, exist_ok=True)
                t = fresh[j].detach().cpu().contiguous()
                atomic_write(str(path), lambda tmp, t=t: save_file({"x0": t}, tmp))
        return torch.stack(out)

    def _text(self, prompts: list[str]):
        if self.cache is None:
            return self.conditioner.encode(prompts)
        from safetensors.torch import load_file, save_file

        from hypersd_core.lora_formats import atomic_write

        hidden, pooled = [], []
        for p in prompts:
            key = hashlib.sha1(f"text|{p}|{self.model.base_model}".encode()).hexdigest()
            path = self._cache_path(key)
            if path.is_file():
                item = load_file(str(path))
            else:
                h, pl = self.conditioner._encode_raw([p])
                item = {"text.hidden": h[0].float().cpu().contiguous()}
                if pl is not None:
                    item["text.pooled"] = pl[0].float().cpu().contiguous()
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(str(path), lambda tmp, item=item: save_file(item, tmp))
            hidden.append(item["text.hidden"])
            pooled.append(item.get("text.pooled"))
        return self.conditioner.pack(torch.stack(hidden), torch.stack(pooled) if pooled[0] is not None else None)

    def next_batch(self) -> Batch:
        item = self.next_raw()
        x0 = self._model_space(item)
        cond, added = self._text(item["captions"])
        if added is not None and "time_ids" in added:  # SDXL: this batch's original size, crop and target size
            added = dict(added, time_ids=item["time_ids"].to(added["time_ids"].device, added["time_ids"].dtype))
        return Batch(x0, cond, list(item["captions"]), added)

    def state(self):
        return {}, {
            "consumed": self.consumed,
            "positions": self.positions,
            "bad": self.bad,
            "seen": self.seen,
            "bad_keys": sorted(self.bad_keys),
            "workers": self.workers,
        }

    def load_state(self, tensors, meta):
        if self.shards is not None and meta.get("positions") and meta.get("workers") != self.workers:
            raise DataError(
                f"this streaming run was checkpointed with {meta.get('workers')} data workers per process; "
                f"resume it with data.num_workers={meta.get('workers')}"
            )
        self.consumed, self.positions = meta["consumed"], dict(meta.get("positions", {}))
        self.bad, self.seen, self.bad_keys = dict(meta["bad"]), meta["seen"], set(meta.get("bad_keys", []))
        self._iter = None

    def stats(self) -> dict:
        return {
            "bad_samples": dict(self.bad),
            "skipped": sum(self.bad.values()),
            "seen": self.seen,
            "records": len(self.records) if self.shards is None else None,
            "batches": self.consumed,
        }


def _image_size(rec, table) -> tuple[int, int] | None:
    """(height, width) from the image header, or None when unreadable (decoding it fails later)."""
    from PIL import Image

    try:  # a plain file: PIL reads the header only
        with Image.open(rec.path if rec.offset < 0 and rec.row < 0 else io.BytesIO(rec.read(table))) as img:
            return img.size[1], img.size[0]
    except Exception:
        return None


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
