"""Check a .safetensors file from its header alone, before anything loads it.

``inspect_safetensors`` reads the 8-byte length and the JSON header (never the tensors) and raises
``SafetensorsFileError`` with one line that names the file and says what is wrong: missing, empty,
a pickled checkpoint renamed, a header that is not JSON or absurdly large, or a file cut short.
"""

from __future__ import annotations

import json
import os
import struct

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# Leading bytes of the formats people rename to .safetensors by mistake.
_MAGIC = {
    b"PK\x03\x04": "a zip archive (a PyTorch .ckpt/.pt/.bin checkpoint)",
    b"\x80\x02": "a pickle (an old PyTorch .ckpt/.pt/.bin checkpoint)",
    b"\x80\x03": "a pickle (an old PyTorch .ckpt/.pt/.bin checkpoint)",
    b"\x80\x04": "a pickle (a PyTorch .ckpt/.pt/.bin checkpoint)",
    b"\x80\x05": "a pickle (a PyTorch .ckpt/.pt/.bin checkpoint)",
    b"GGUF": "a GGUF file",
}


class SafetensorsFileError(ValueError):
    """A file that cannot be a usable safetensors file; the message names it and says why."""


def inspect_safetensors(path: str | os.PathLike) -> dict:
    """Return ``{"tensors": {name: {"dtype", "shape"}}, "metadata": {...}}`` from ``path``'s header.

    Checks that the data the header describes is all there (a truncated download fails here, not
    deep inside a loader). Reads at most the header: cheap even for a 7 GB checkpoint."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise SafetensorsFileError(f"{name}: file not found")
    size = os.path.getsize(name)
    if size < 8:
        raise SafetensorsFileError(f"{name}: {size} bytes, too short to be a safetensors file (empty or cut short)")
    with open(name, "rb") as f:
        head = f.read(8)
        for magic, what in _MAGIC.items():
            if head.startswith(magic):
                raise SafetensorsFileError(
                    f"{name}: this is {what}, not safetensors; it is not loaded (unpickling runs code). "
                    "Get the .safetensors release of this file, or convert it where you trust its source"
                )
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise SafetensorsFileError(
                f"{name}: header claims {n} bytes (limit {MAX_HEADER_BYTES}); the file is corrupt or not safetensors"
            )
        if 8 + n > size:
            raise SafetensorsFileError(
                f"{name}: file ends inside its header ({size} of {8 + n} bytes): "
                "it was cut short; download or copy it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsFileError(
            f"{name}: the header is not valid JSON; the file is corrupt or not safetensors"
        ) from None
    if not isinstance(header, dict):
        raise SafetensorsFileError(f"{name}: the header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for key, info in header.items():
        try:
            lo, hi = info["data_offsets"]
            tensors[key] = {"dtype": info["dtype"], "shape": list(info["shape"])}
        except (TypeError, KeyError, ValueError):
            raise SafetensorsFileError(
                f"{name}: tensor {key!r} has a malformed header entry; the file is corrupt"
            ) from None
        end = max(end, int(hi))
    if 8 + n + end > size:
        raise SafetensorsFileError(
            f"{name}: truncated: the header describes {8 + n + end} bytes but the file has "
            f"{size}; download or copy it again"
        )
    return {"tensors": tensors, "metadata": metadata if isinstance(metadata, dict) else {}}
