"""Training data: the shipped digits, a local folder of images with captions, or webdataset tar
shards; batches come out in model space (VAE latents, or pixels) with text conditioning."""

from __future__ import annotations

from .records import DataError, folder_records, webdataset_records
from .source import BatchSource, DigitSource, RecordSource


def build_source(cfg, model, conditioner, device, rank: int = 0, world: int = 1, seed: int = 0) -> BatchSource:
    """The batch source named by ``cfg.kind`` (a DataConfig) for this process."""
    if cfg.kind == "digits":
        return DigitSource(conditioner, cfg.batch_size, model.resolution, device, seed=seed + 1000 * rank)
    if cfg.kind == "folder":
        records = folder_records(cfg.path, cfg.captions)
    elif cfg.kind == "webdataset":
        records = webdataset_records(cfg.path)
    else:
        raise DataError(f"data.kind must be digits, folder or webdataset, got {cfg.kind!r}")
    return RecordSource(records, cfg, model, conditioner, device, rank=rank, world=world, seed=seed)


__all__ = ["BatchSource", "DataError", "DigitSource", "RecordSource", "build_source", "folder_records", "webdataset_records"]
