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
        json.dumps({"file_name": "img0.png", "text": "zero"})
        + "\n"
        + json.dumps({"file_name": "img1.png", "text": "one"})
        + "\n"
        + json.dumps({"file_name": "gone.png", "text": "missing"})
        + "\n"
    )
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
    write_shard(
        tmp_path / "data-000.tar",
        [
            ("a.png", png_bytes(10)),
            ("a.txt", b"first"),
            ("b.png", png_bytes(200)),
            ("b.json", json.dumps({"caption": "second"}).encode()),
            ("c.png", png_bytes(90)),
        ],
    )
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


# -- the DataLoader pipeline -------------------------------------------------------------------------
def rgb_png(w, h, value=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def many(tmp_path, n=12):
    for i in range(n):
        (tmp_path / f"im{i:02d}.png").write_bytes(png_bytes(10 * i))
        (tmp_path / f"im{i:02d}.txt").write_text(f"p{i}")
    return folder_records(str(tmp_path))


def test_workers_give_the_same_batches_and_resume(tmp_path):
    recs = many(tmp_path)
    seq = lambda src, n: [(src.next_batch().prompts) for _ in range(n)]  # noqa: E731
    ref = seq(source(recs, batch=3), 7)  # crosses an epoch (4 batches per epoch)
    two = source(recs, batch=3, num_workers=2)
    assert seq(two, 7) == ref
    # resume mid-run with workers: the position is the number of batches handed out
    a = source(recs, batch=3, num_workers=2)
    seq(a, 3)
    tensors, meta = a.state()
    b = source(recs, batch=3, num_workers=1)
    b.load_state(tensors, json.loads(json.dumps(meta)))
    assert seq(b, 4) == ref[3:]


class SDXLCond(FakeConditioner):
    """Shaped like the SDXL conditioner: added cond with fixed time ids the source replaces."""

    def encode(self, prompts):
        n = len(prompts)
        return torch.zeros(n, 2), {"text_embeds": torch.zeros(n, 3), "time_ids": torch.full((n, 6), -1.0)}


def test_buckets_and_size_conditioning(tmp_path):
    for i, (w, h) in enumerate([(64, 32), (66, 30), (32, 64), (30, 66), (40, 40), (41, 39)]):
        (tmp_path / f"a{i}.png").write_bytes(rgb_png(w, h))
        (tmp_path / f"a{i}.txt").write_text(f"c{i}")
    model = SimpleNamespace(channels=3, vae=None, resolution=32, base_model="sdxl-test")
    cfg = DataConfig(kind="folder", batch_size=2, buckets=True, bucket_step=8)
    src = RecordSource(folder_records(str(tmp_path)), cfg, model, SDXLCond(), "cpu", seed=0)
    shapes = set()
    for _ in range(3):
        b = src.next_batch()
        assert b.x0.shape[0] == 2  # each batch from one bucket (two images of each aspect)
        ids = b.added_cond["time_ids"]
        h, w = b.x0.shape[-2:]
        assert (ids[:, 4:] == torch.tensor([float(h), float(w)])).all()  # target size = the bucket
        assert (ids[:, :2] > 0).all() and (ids[:, :2] != -1).all()  # original sizes of the images
        assert abs(h * w - 32 * 32) <= 32 * 8  # about resolution² pixels
        shapes.add((h, w))
    assert len(shapes) == 3 and any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    ids = b.added_cond["time_ids"]
    assert set(map(tuple, ids[:, :2].tolist())) <= {
        (32.0, 64.0),
        (30.0, 66.0),
        (64.0, 32.0),
        (66.0, 30.0),
        (40.0, 40.0),
        (39.0, 41.0),
    }


def test_streaming_shards_shuffle_split_and_resume(tmp_path):
    for s in range(4):
        write_shard(
            tmp_path / f"s-{s}.tar",
            [
                item
                for i in range(3)
                for item in ((f"k{s}{i}.png", png_bytes(20 * i)), (f"k{s}{i}.txt", f"s{s}i{i}".encode()))
            ],
        )
    shards = [str(tmp_path / f"s-{s}.tar") for s in range(4)]
    cfg = lambda **kw: DataConfig(kind="webdataset", streaming=True, batch_size=2, **kw)  # noqa: E731

    def src(rank=0, world=1, **kw):
        return RecordSource(
            None, cfg(**kw), MODEL, FakeConditioner(), "cpu", rank=rank, world=world, seed=5, shards=shards
        )

    a = src()
    first = [a.next_batch().prompts for _ in range(6)]  # one epoch = 12 samples
    epoch0 = [p for b in first for p in b]
    assert sorted(epoch0) == sorted(f"s{s}i{i}" for s in range(4) for i in range(3))
    shard_order = [p[:2] for p in epoch0[::3]]
    second = [p for _ in range(6) for p in a.next_batch().prompts]
    assert [p[:2] for p in second[::3]] != shard_order  # shards reshuffled for the next epoch
    # per process: disjoint shard sets
    r0 = {p[:2] for _ in range(3) for p in src(0, 2).next_batch().prompts}
    r1 = {p[:2] for _ in range(3) for p in src(1, 2).next_batch().prompts}
    assert not r0 & r1
    # resume with 2 workers: the position of each worker's stream is restored
    ref_src = src(num_workers=2)
    ref = [ref_src.next_batch().prompts for _ in range(9)]
    b = src(num_workers=2)
    for _ in range(4):
        b.next_batch()
    tensors, meta = b.state()
    c = src(num_workers=2)
    c.load_state(tensors, json.loads(json.dumps(meta)))
    assert [c.next_batch().prompts for _ in range(5)] == ref[4:]


def test_hf_datasets_from_local_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    img = tmp_path / "imgs"
    img.mkdir()
    rows = []
    for i in range(4):
        (img / f"i{i}.png").write_bytes(png_bytes(30 * i))
        rows.append({"file_name": f"i{i}.png", "text": f"hf {i}"})
    (img / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from train.data import hf_records

    for path in ("imagefolder", "parquet", "disk"):
        if path == "imagefolder":
            target = img
        else:
            ds = datasets.Dataset.from_dict(
                {"image": [str(img / r["file_name"]) for r in rows], "caption": [r["text"] for r in rows]}
            ).cast_column("image", datasets.Image())
            target = tmp_path / path
            if path == "parquet":
                target.mkdir()
                ds.to_parquet(str(target / "train.parquet"))
            else:
                ds.save_to_disk(str(target))
        recs, table = hf_records(str(target))
        assert sorted(r.caption for r in recs.records) == [f"hf {i}" for i in range(4)], path
        cfg = DataConfig(kind="hf", batch_size=2, num_workers=1)
        b = RecordSource(recs, cfg, MODEL, FakeConditioner(), "cpu", table=table).next_batch()
        assert b.x0.shape == (2, 1, 8, 8) and all(p.startswith("hf ") for p in b.prompts)
    with pytest.raises(DataError, match="not found"):
        hf_records(str(tmp_path / "nope"))


def test_vae_batched_with_content_addressed_cache(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for i in range(4):
        (data / f"x{i}.png").write_bytes(rgb_png(16, 16, 40 * i))
        (data / f"x{i}.txt").write_text(f"c{i}")
    (data / "copy.png").write_bytes(rgb_png(16, 16, 0))  # same bytes as x0: same cache entry
    (data / "copy.txt").write_text("c0")

    class VAE(torch.nn.Module):
        dtype = torch.float32
        calls: list = []

        def encode(self, x):
            VAE.calls.append(x.shape[0])
            return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x[:, :1, ::2, ::2] * 2))

    model = SimpleNamespace(channels=3, vae=VAE(), resolution=16, base_model="t", scaling_factor=0.5)

    class Cond(FakeConditioner):
        def _encode_raw(self, prompts):
            return torch.ones(len(prompts), 3, 4), None

        def pack(self, hidden, pooled):
            return hidden, None

    cfg = DataConfig(kind="folder", batch_size=5, cache_dir=str(tmp_path / "cache"))
    src = RecordSource(folder_records(str(data)), cfg, model, Cond(), "cpu", seed=0)
    b = src.next_batch()
    assert VAE.calls == [5]  # one VAE call for the whole batch
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4 + 4  # 4 distinct images, 4 captions
    b2 = RecordSource(folder_records(str(data)), cfg, model, Cond(), "cpu", seed=0).next_batch()
    assert VAE.calls == [5]  # all from the cache
    torch.testing.assert_close(b2.x0, b.x0)


def test_summary_reports_skipped_samples(tiny_run):
    _, results, out = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["skipped"] == 0 and len(summary["data"]["per_process"]) == 1


# -- bad data: one line, or skipped and counted ----------------------------------------------
def test_binary_txt_caption_is_skipped_and_counted(tmp_path):
    make_folder(tmp_path, 3)
    (tmp_path / "img0.txt").write_text("a digit 0")
    (tmp_path / "img1.txt").write_bytes(b"\x00\xff\xfe\x89PNG garbage")
    (tmp_path / "img2.txt").write_bytes("ein Ziffer 2 \u00e9".encode("latin-1"))
    with pytest.warns(UserWarning, match="not UTF-8 text"):
        rec = folder_records(str(tmp_path))
    assert [r.caption for r in rec.records] == ["a digit 0"]
    assert rec.skipped == {"unreadable caption": 2}


@pytest.mark.parametrize(
    "name, content",
    [
        ("captions.jsonl", b'{"file_name": "img0.png", "text": "\xe9t\xe9"}\n'),
        ("captions.csv", b"file_name,text\nimg0.png,\xe9t\xe9\n"),
    ],
)
def test_caption_file_not_utf8_one_line(tmp_path, name, content):
    make_folder(tmp_path, 1)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as e:
        folder_records(str(tmp_path))
    msg = str(e.value)
    assert name in msg and "not UTF-8 text" in msg and "save it as UTF-8" in msg and "\n" not in msg


def test_truncated_shard_among_good_ones_is_skipped(tmp_path):
    for i in range(2):
        write_shard(
            tmp_path / f"good-{i}.tar",
            [(f"k{j}.png", png_bytes(10 * j)) for j in range(3)]
            + [(f"k{j}.txt", f"digit {j}".encode()) for j in range(3)],
        )
    write_shard(tmp_path / "bad.tar", [("k0.png", png_bytes(5) * 200), ("k0.txt", b"digit")])
    data = (tmp_path / "bad.tar").read_bytes()
    (tmp_path / "bad.tar").write_bytes(data[:700])
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 10)
    with pytest.warns(UserWarning, match="skipping shard"):
        rec = webdataset_records(str(tmp_path / "*.tar"))
    assert len(rec.records) == 6 and all(r.key.startswith("good-") for r in rec.records)
    assert rec.skipped.get("unreadable shard", 0) >= 1


def test_all_shards_unreadable_is_one_error(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match="no usable samples"), pytest.warns(UserWarning):
        webdataset_records(str(tmp_path / "a.tar"))
