"""Training data: the shipped digits, a local folder of images with captions, webdataset tar
shards (listed, or streamed) or a local Hugging Face dataset; batches come out in model space (VAE latents, or pixels) with text conditioning."""

from __future__ import annotations

from pathlib import Path

from .records import DataError, expand_shards, folder_records, hf_records, webdataset_records
from .source import BatchSource, DigitSource, RecordSource


def build_source(cfg, model, conditioner, device, rank: int = 0, world: int = 1, seed: int = 0) -> BatchSource:
    """The batch source named by ``cfg.kind`` (a DataConfig) for this process."""
    if cfg.kind == "digits":
        layout = model.extras.get("data_layout", "digits")
        return DigitSource(
            conditioner, cfg.batch_size, model.resolution, device, seed=seed + 1000 * rank, layout=layout
        )
    table = None
    if cfg.kind == "folder":
        records = folder_records(cfg.path, cfg.captions)
    elif cfg.kind == "webdataset" and cfg.streaming:
        shards = expand_shards(cfg.path or "")
        missing = [s for s in shards if not Path(s).is_file()]
        if not cfg.path or missing:
            raise DataError(f"webdataset shard(s) not found: {', '.join(missing[:5]) or cfg.path!r}")
        return RecordSource(None, cfg, model, conditioner, device, rank=rank, world=world, seed=seed, shards=shards)
    elif cfg.kind == "webdataset":
        records = webdataset_records(cfg.path)
    elif cfg.kind == "hf":
        records, table = hf_records(cfg.path, cfg.image_column, cfg.caption_column)
    else:
        raise DataError(f"data.kind must be digits, folder, webdataset or hf, got {cfg.kind!r}")
    return RecordSource(records, cfg, model, conditioner, device, rank=rank, world=world, seed=seed, table=table)


__all__ = [
    "BatchSource",
    "DataError",
    "DigitSource",
    "RecordSource",
    "build_source",
    "folder_records",
    "hf_records",
    "webdataset_records",
]
