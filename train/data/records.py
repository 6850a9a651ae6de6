"""Listing training samples: (image loader, caption) records from a folder or webdataset shards.

Folder captions come from ``captions`` (a .jsonl or .csv with a file column: file_name / image /
file / path, and a text column: text / caption), else captions.jsonl / metadata.jsonl /
captions.csv / metadata.csv in the folder, else a same-stem .txt beside each image.
Webdataset shards are plain tar files whose members share a key (``key.jpg`` + ``key.txt`` or
``key.json`` with a caption); they are read with the standard library's tarfile.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FILE_COLS = ("file_name", "image", "file", "path")
TEXT_COLS = ("text", "caption", "prompt")


class DataError(UserError, ValueError):
    """Unusable training data; the message says what to fix."""


@dataclass
class Record:
    """One sample: its image bytes live at ``path`` (a whole file, or ``size`` bytes at ``offset``
    inside a tar shard), or in row ``row`` of a Hugging Face dataset. Plain data, so DataLoader
    worker processes can receive it."""

    key: str
    caption: str
    path: str = ""
    offset: int = -1
    size: int = -1
    row: int = -1

    def read(self, table=None) -> bytes:
        """Raw image bytes; raises OSError for missing / unreadable files."""
        if self.row >= 0:
            return hf_image_bytes(table, self.row)
        if self.offset < 0:
            return Path(self.path).read_bytes()
        with open(self.path, "rb") as f:  # a tar member: one seek, no tar parsing per sample
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.path} is truncated at {self.key}")
        return data


@dataclass
class RecordList:
    records: list[Record]
    skipped: dict  # reason -> count, found while listing


def caption_text(raw: bytes) -> str | None:
    """A caption from raw bytes: UTF-8 text without control characters, stripped; None when the
    bytes are not text (binary garbage, another encoding) and the sample should be skipped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text) or "\ufffd" in text:
        return None
    return text.strip()


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 4]!r}); save it as UTF-8"
        ) from None


def _caption_table(path: Path) -> dict[str, str]:
    rows: list[dict] = []
    try:
        if path.suffix == ".jsonl":
            for n, line in enumerate(_read_utf8(path).splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(_read_utf8(path), newline="")))
        else:
            raise DataError(f"caption file {path} must be .jsonl or .csv")
    except OSError as e:
        raise DataError(f"cannot read caption file {path}: {e}") from e
    table = {}
    for n, row in enumerate(rows, 1):
        fcol = next((c for c in FILE_COLS if c in row), None)
        tcol = next((c for c in TEXT_COLS if c in row), None)
        if fcol is None or tcol is None:
            raise DataError(
                f"{path} row {n}: needs a file column ({'/'.join(FILE_COLS)}) and a text column "
                f"({'/'.join(TEXT_COLS)}); got {sorted(row)}"
            )
        table[str(row[fcol])] = str(row[tcol])
    return table


def folder_records(folder: str | None, captions: str | None = None) -> RecordList:
    if not folder:
        raise DataError("data.kind=folder needs data.path: a folder of images with captions")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    skipped: dict[str, int] = {}
    cap_file = (
        Path(captions)
        if captions
        else next(
            (
                root / n
                for n in ("captions.jsonl", "metadata.jsonl", "captions.csv", "metadata.csv")
                if (root / n).is_file()
            ),
            None,
        )
    )
    records = []
    if cap_file is not None:
        if not cap_file.is_file():
            raise DataError(f"caption file not found: {cap_file}")
        for name, text in sorted(_caption_table(cap_file).items()):
            p = root / name
            if not p.is_file():
                skipped["missing image"] = skipped.get("missing image", 0) + 1
                continue
            records.append(Record(name, text, str(p)))
    else:
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        for p in images:
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                skipped["no caption"] = skipped.get("no caption", 0) + 1
                continue
            text = caption_text(txt.read_bytes())
            if text is None:
                skipped["unreadable caption"] = skipped.get("unreadable caption", 0) + 1
                warnings.warn(f"skipping {p.name}: its caption {txt.name} is not UTF-8 text", stacklevel=2)
                continue
            records.append(Record(str(p.relative_to(root)), text, str(p)))
    if not records:
        raise DataError(
            f"no usable samples in {root} (skipped: {skipped or 'none found'}); expected images "
            f"({', '.join(IMAGE_EXTS)}) with a captions.jsonl/.csv or same-stem .txt captions"
        )
    return RecordList(records, skipped)


def expand_shards(spec: str) -> list[str]:
    """'a-{000..002}.tar' -> three names; a folder -> its *.tar; a glob pattern -> its matches."""
    p = Path(spec)
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.tar"))
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if m:
        a, b = m.group(1), m.group(2)
        return [spec[: m.start()] + str(i).zfill(len(a)) + spec[m.end() :] for i in range(int(a), int(b) + 1)]
    return sorted(glob.glob(spec)) or [spec]


def webdataset_records(spec: str | None) -> RecordList:
    if not spec:
        raise DataError("data.kind=webdataset needs data.path: shard pattern (data-{000..009}.tar), folder or file")
    shards = expand_shards(spec)
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise DataError(f"webdataset shard(s) not found: {', '.join(missing[:5])}")
    records, skipped = [], {}
    for shard in shards:
        try:
            with tarfile.open(shard) as tf:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tf.getmembers():
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    groups.setdefault(m.name[: len(m.name) - len(base)] + key, {})[ext.lower()] = m
                for key, g in groups.items():
                    img = next((g[e] for e in ("jpg", "jpeg", "png", "webp") if e in g), None)
                    cap = None
                    if "txt" in g:
                        cap = caption_text(tf.extractfile(g["txt"]).read())
                    elif "json" in g:
                        try:
                            meta = json.loads(tf.extractfile(g["json"]).read())
                            cap = next((str(meta[c]) for c in TEXT_COLS if c in meta), None)
                        except json.JSONDecodeError:
                            cap = None
                    if img is None or cap is None:
                        reason = "no image" if img is None else "no caption"
                        skipped[reason] = skipped.get(reason, 0) + 1
                        continue
                    records.append(Record(f"{Path(shard).name}/{key}", cap, shard, img.offset_data, img.size))
        except (tarfile.TarError, OSError, EOFError) as e:  # truncated or not a tar: skip the shard, count it
            skipped["unreadable shard"] = skipped.get("unreadable shard", 0) + 1
            warnings.warn(f"skipping shard {shard}: not a readable tar ({e})", stacklevel=2)
            records = [r for r in records if not r.key.startswith(f"{Path(shard).name}/")]
    if not records:
        raise DataError(
            f"no usable samples in {len(shards)} shard(s) (skipped: {skipped}); members must be "
            "<key>.jpg/.png with <key>.txt or <key>.json captions"
        )
    return RecordList(records, skipped)


# -- Hugging Face datasets, local files only ----------------------------------------------------
class HFImages:
    """Row -> the undecoded Image feature ({"bytes", "path"}); picklable for DataLoader workers."""

    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def __getitem__(self, row: int):
        return self.ds[row][self.column]


def hf_image_bytes(table, row: int) -> bytes:
    """The encoded image of ``row`` (an Image feature read without decoding)."""
    if table is None:
        raise OSError(f"row {row}: no dataset table")
    item = table[row]
    if isinstance(item, dict):
        if item.get("bytes"):
            return item["bytes"]
        if item.get("path"):
            return Path(item["path"]).read_bytes()
    raise OSError(f"row {row} has no image bytes")


def hf_records(path: str | None, image_column: str = "image", caption_column: str | None = None):
    """(RecordList, image column) from a local Hugging Face dataset: a ``save_to_disk`` folder, a
    parquet file or folder of them, or an imagefolder (images + metadata.jsonl/csv). Nothing is
    downloaded (HF_DATASETS_OFFLINE is set for the load)."""
    import os

    if not path:
        raise DataError("data.kind=hf needs data.path: a save_to_disk folder, parquet file(s) or an image folder")
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset path not found: {p}")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as e:
        raise DataError("data.kind=hf needs the datasets package: pip install datasets") from e
    if (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))
    elif p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*.parquet"))):
        files = [str(p)] if p.is_file() else sorted(str(x) for x in p.glob("*.parquet"))
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    elif p.is_dir():
        ds = datasets.load_dataset("imagefolder", data_dir=str(p), split="train")
    else:
        raise DataError(f"{p}: expected a save_to_disk folder, .parquet file(s) or an image folder")
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    cols = ds.column_names
    if image_column not in cols:
        raise DataError(f"{p}: no image column {image_column!r} (columns: {cols}); set data.image_column")
    cap = caption_column or next((c for c in TEXT_COLS if c in cols), None)
    if cap is None or cap not in cols:
        raise DataError(f"{p}: no caption column (columns: {cols}); set data.caption_column")
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    captions = ds[cap]
    records = [Record(f"row{i}", str(c), row=i) for i, c in enumerate(captions) if c is not None]
    skipped = {"no caption": len(captions) - len(records)} if len(records) < len(captions) else {}
    if not records:
        raise DataError(f"no usable samples in {p}")
    return RecordList(records, skipped), HFImages(ds.select_columns([image_column]), image_column)
