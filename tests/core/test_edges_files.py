"""Bad LoRA and safetensors files: each is refused with one line that names the file and says what
is wrong, from the header where it can be; nothing non-finite is saved; files honour the umask."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from hypersd_core.lora_formats import LoraFormatError, load_lora, save_lora
from hypersd_core.safetensors_check import SafetensorsFileError, inspect_safetensors

GOOD = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 32),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 4),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
}


def _good(path):
    save_file(GOOD, str(path))
    return path.read_bytes()


def _header_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# (name, how to make the bytes from a good file's bytes, words expected)
FILE_CASES = [
    ("truncated", lambda good: good[: len(good) - 40], ["truncated", "download or copy it again"]),
    ("cut in header", lambda good: good[:20], ["ends inside its header"]),
    ("empty", lambda good: b"", ["too short"]),
    (
        "pickle renamed",
        lambda good: b"\x80\x04\x95\x10\x00" + b"\x00" * 64,
        ["a pickle", "not safetensors", "unpickling runs code"],
    ),
    ("zip checkpoint renamed", lambda good: b"PK\x03\x04" + b"\x00" * 64, ["a zip archive"]),
    ("huge header", lambda good: struct.pack("<Q", 2**40) + b"{}", ["header claims", "corrupt"]),
    ("header not json", lambda good: struct.pack("<Q", 8) + b"not json" + b"\x00" * 8, ["not valid JSON"]),
    ("header not object", lambda good: _header_bytes([1, 2]), ["not a JSON object"]),
    ("bad entry", lambda good: _header_bytes({"w": {"dtype": "F32"}}), ["malformed header entry"]),
]


@pytest.mark.parametrize("name, make, needles", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_broken_safetensors_one_line(tmp_path, name, make, needles):
    good = _good(tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(make(good))
    for fn, err in ((inspect_safetensors, SafetensorsFileError), (load_lora, LoraFormatError)):
        with pytest.raises(err) as e:
            fn(bad)
        msg = str(e.value)
        assert "bad.safetensors" in msg and "\n" not in msg
        for n in needles:
            assert n in msg, (n, msg)
    assert set(inspect_safetensors(tmp_path / "good.safetensors")["tensors"]) == set(GOOD)  # good still loads


@pytest.mark.parametrize(
    "value, needles",
    [
        (float("nan"), ["NaN or Inf", "lora_down.weight"]),
        (float("inf"), ["NaN or Inf"]),
    ],
)
def test_non_finite_lora_refused_at_load_and_save(tmp_path, value, needles):
    sd = {k: v.clone() for k, v in GOOD.items()}
    key = next(k for k in sd if k.endswith("lora_down.weight"))
    sd[key][0, 0] = value
    with pytest.raises(LoraFormatError) as e:
        save_lora(tmp_path / "x.safetensors", sd)
    assert all(n in str(e.value) for n in needles) and not (tmp_path / "x.safetensors").exists()
    save_file(sd, str(tmp_path / "y.safetensors"))  # written by another tool
    with pytest.raises(LoraFormatError, match="y.safetensors.*NaN or Inf"):
        load_lora(tmp_path / "y.safetensors")


def test_integer_and_empty_files_refused(tmp_path):
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 2, dtype=torch.int32)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(LoraFormatError, match="int.safetensors.*not floating point"):
        load_lora(tmp_path / "int.safetensors")
    save_file({}, str(tmp_path / "none.safetensors"))
    with pytest.raises(LoraFormatError, match="none.safetensors holds no tensors"):
        load_lora(tmp_path / "none.safetensors")


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = save_lora(tmp_path / "lora.safetensors", GOOD)
        assert os.stat(p).st_mode & 0o777 == 0o644  # readable by a ComfyUI running as another user
        os.umask(0o077)
        p = save_lora(tmp_path / "private.safetensors", GOOD)
        assert os.stat(p).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_atomic_write_text_replaces_whole_or_not_at_all(tmp_path):
    from hypersd_core.lora_formats import atomic_write, atomic_write_text

    p = tmp_path / "new" / "summary.json"
    atomic_write_text(p, '{"a": 1} é\n')  # makes the folder; UTF-8 whatever the locale
    assert p.read_bytes() == '{"a": 1} é\n'.encode()
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~_umask()

    def dies(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(str(p), dies)
    assert p.read_bytes() == '{"a": 1} é\n'.encode()  # the old file stays whole
    assert sorted(x.name for x in p.parent.iterdir()) == ["summary.json"]  # no .tmp- left


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old
