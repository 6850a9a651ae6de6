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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FILE_COLS = ("file_name", "image", "file", "path")
TEXT_COLS = ("text", "caption", "prompt")


class DataError(UserError, ValueError):
    """Unusable training data; the message says what to fix."""


@dataclass
class Record:
    key: str
    caption: str
    read: Callable[[], bytes]  # raw image bytes; may raise for missing/unreadable files


@dataclass
class RecordList:
    records: list[Record]
    skipped: dict  # reason -> count, found while listing


def _read_file(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()


def _caption_table(path: Path) -> dict[str, str]:
    rows: list[dict] = []
    try:
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            raise DataError(f"caption file {path} must be .jsonl or .csv")
    except OSError as e:
        raise DataError(f"cannot read caption file {path}: {e}") from e
    table = {}
    for n, row in enumerate(rows, 1):
        fcol = next((c for c in FILE_COLS if c in row), None)
        tcol = next((c for c in TEXT_COLS if c in row), None)
        if fcol is None or tcol is None:
            raise DataError(f"{path} row {n}: needs a file column ({'/'.join(FILE_COLS)}) and a text column "
                            f"({'/'.join(TEXT_COLS)}); got {sorted(row)}")
        table[str(row[fcol])] = str(row[tcol])
    return table


def folder_records(folder: str | None, captions: str | None = None) -> RecordList:
    if not folder:
        raise DataError("data.kind=folder needs data.path: a folder of images with captions")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    skipped: dict[str, int] = {}
    cap_file = Path(captions) if captions else next(
        (root / n for n in ("captions.jsonl", "metadata.jsonl", "captions.csv", "metadata.csv") if (root / n).is_file()), None)
    records = []
    if cap_file is not None:
        if not cap_file.is_file():
            raise DataError(f"caption file not found: {cap_file}")
        for name, text in sorted(_caption_table(cap_file).items()):
            p = root / name
            if not p.is_file():
                skipped["missing image"] = skipped.get("missing image", 0) + 1
                continue
            records.append(Record(name, text, _read_file(p)))
    else:
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        for p in images:
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                skipped["no caption"] = skipped.get("no caption", 0) + 1
                continue
            records.append(Record(str(p.relative_to(root)), txt.read_text(encoding="utf-8", errors="replace").strip(), _read_file(p)))
    if not records:
        raise DataError(f"no usable samples in {root} (skipped: {skipped or 'none found'}); expected images "
                        f"({', '.join(IMAGE_EXTS)}) with a captions.jsonl/.csv or same-stem .txt captions")
    return RecordList(records, skipped)


def expand_shards(spec: str) -> list[str]:
    """'a-{000..002}.tar' -> three names; a folder -> its *.tar; a glob pattern -> its matches."""
    p = Path(spec)
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.tar"))
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if m:
        a, b = m.group(1), m.group(2)
        return [spec[:m.start()] + str(i).zfill(len(a)) + spec[m.end():] for i in range(int(a), int(b) + 1)]
    return sorted(glob.glob(spec)) or [spec]


def _tar_reader(shard: str, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with tarfile.open(shard) as tf:
            f = tf.extractfile(member)
            if f is None:
                raise OSError(f"{member} is not a file in {shard}")
            return f.read()
    return read


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
                        cap = tf.extractfile(g["txt"]).read().decode("utf-8", "replace").strip()
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
                    records.append(Record(f"{Path(shard).name}/{key}", cap, _tar_reader(shard, img.name)))
        except tarfile.TarError as e:
            raise DataError(f"{shard} is not a readable tar shard ({e})") from e
    if not records:
        raise DataError(f"no usable samples in {len(shards)} shard(s) (skipped: {skipped}); members must be "
                        "<key>.jpg/.png with <key>.txt or <key>.json captions")
    return RecordList(records, skipped)


def decode_image(data: bytes, mode: str):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert(mode)
