"""Data sources: folder with jsonl/csv/.txt captions, webdataset shards, bad samples skipped and
counted, clear errors for empty or missing data, and a resumable position."""

import io
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from train.config import DataConfig
from train.data import DataError, RecordSource, folder_records, webdataset_records


class FakeConditioner:
    """Text -> a deterministic tensor; keeps these tests free of text models."""

    def encode(self, prompts):
        return torch.tensor([[float(len(p))] for p in prompts]), None


MODEL = SimpleNamespace(channels=1, vae=None, resolution=8, base_model="test")


def png_bytes(value: int, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def make_folder(tmp_path, n=4):
    for i in range(n):
        (tmp_path / f"img{i}.png").write_bytes(png_bytes(40 * i))
    return tmp_path


def source(records, tmp_path=None, batch=2, rank=0, world=1, **kw):
    cfg = DataConfig(kind="folder", batch_size=batch, **kw)
    return RecordSource(records, cfg, MODEL, FakeConditioner(), "cpu", rank=rank, world=world, seed=3)


def test_folder_txt_captions_and_batches(tmp_path):
    make_folder(tmp_path)
    for i in range(3):
        (tmp_path / f"img{i}.txt").write_text(f"caption {i}\n")
    recs = folder_records(str(tmp_path))
    assert [r.caption for r in recs.records] == ["caption 0", "caption 1", "caption 2"]
    assert recs.skipped == {"no caption": 1}
    b = source(recs).next_batch()
    assert b.x0.shape == (2, 1, 8, 8) and b.x0.min() >= -1 and b.x0.max() <= 1
    assert all(p.startswith("caption") for p in b.prompts)


def test_folder_jsonl_and_csv(tmp_path):
    make_folder(tmp_path, 2)
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file_name": "img0.png", "text": "zero"}) + "\n" + json.dumps({"file_name": "img1.png", "text": "one"}) + "\n"
        + json.dumps({"file_name": "gone.png", "text": "missing"}) + "\n")
    recs = folder_records(str(tmp_path))
    assert sorted(r.caption for r in recs.records) == ["one", "zero"] and recs.skipped == {"missing image": 1}
    csv_path = tmp_path / "other.csv"
    csv_path.write_text("image,caption\nimg1.png,a one\n")
    recs = folder_records(str(tmp_path), str(csv_path))
    assert [r.caption for r in recs.records] == ["a one"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,words\nimg1.png,x\n")
    with pytest.raises(DataError, match="file column"):
        folder_records(str(tmp_path), str(bad))


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    make_folder(tmp_path, 4)
    (tmp_path / "img1.png").write_bytes(b"not a png")
    for i in range(4):
        (tmp_path / f"img{i}.txt").write_text(f"c{i}")
    src = source(folder_records(str(tmp_path)), batch=4)
    b = src.next_batch()  # the batch comes out without the bad sample
    assert sorted(b.prompts) == ["c0", "c2", "c3"] and b.x0.shape[0] == 3
    assert src.stats()["bad_samples"] == {"UnidentifiedImageError": 1} and src.stats()["skipped"] == 1
    # Too many bad samples: a clear error instead of an endless loop.
    for i in range(4):
        (tmp_path / f"img{i}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="unreadable"):
        source(folder_records(str(tmp_path)), batch=3).next_batch()


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        folder_records(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no usable samples"):
        folder_records(str(tmp_path))
    with pytest.raises(DataError, match="needs data.path"):
        folder_records(None)


def write_shard(path, items):
    with tarfile.open(path, "w") as tf:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    write_shard(tmp_path / "data-000.tar", [("a.png", png_bytes(10)), ("a.txt", b"first"),
                                            ("b.png", png_bytes(200)), ("b.json", json.dumps({"caption": "second"}).encode()),
                                            ("c.png", png_bytes(90))])
    write_shard(tmp_path / "data-001.tar", [("d.png", b"broken"), ("d.txt", b"third")])
    recs = webdataset_records(str(tmp_path / "data-{000..001}.tar"))
    assert sorted(r.caption for r in recs.records) == ["first", "second", "third"]
    assert recs.skipped == {"no caption": 1}
    src = source(recs, batch=2)
    seen = set()
    for _ in range(4):
        seen.update(src.next_batch().prompts)
    assert seen == {"first", "second"} and src.stats()["bad_samples"] == {"no caption": 1, "UnidentifiedImageError": 1}
    with pytest.raises(DataError, match="not found"):
        webdataset_records(str(tmp_path / "missing-{0..1}.tar"))


def test_position_resumes_and_ranks_split(tmp_path):
    make_folder(tmp_path, 6)
    for i in range(6):
        (tmp_path / f"img{i}.txt").write_text(f"c{i}")
    recs = folder_records(str(tmp_path))
    a = source(recs)
    a.next_batch()
    tensors, meta = a.state()
    expected = [a.next_batch().prompts for _ in range(4)]  # crosses an epoch boundary
    b = source(recs)
    b.load_state(tensors, json.loads(json.dumps(meta)))
    assert [b.next_batch().prompts for _ in range(4)] == expected
    r0, r1 = source(recs, batch=3, rank=0, world=2), source(recs, batch=3, rank=1, world=2)
    assert not set(r0.next_batch().prompts) & set(r1.next_batch().prompts)


def test_cache_stores_model_space_and_text(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    make_folder(data, 2)
    for i in range(2):
        (data / f"img{i}.txt").write_text(f"c{i}")

    class Cond(FakeConditioner):
        calls = 0

        def _encode_raw(self, prompts):
            Cond.calls += 1
            return torch.ones(len(prompts), 3, 4), None

        def pack(self, hidden, pooled):
            return hidden, None

    recs = folder_records(str(data))
    cfg = DataConfig(kind="folder", batch_size=2, cache_dir=str(tmp_path / "cache"))
    first = RecordSource(recs, cfg, MODEL, Cond(), "cpu", seed=0).next_batch()
    assert Cond.calls == 2 and len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4  # 2 images + 2 captions
    again = RecordSource(recs, cfg, MODEL, Cond(), "cpu", seed=0).next_batch()
    assert Cond.calls == 2  # served from the cache
    torch.testing.assert_close(again.x0, first.x0)
    assert again.cond.shape == (2, 3, 4)
