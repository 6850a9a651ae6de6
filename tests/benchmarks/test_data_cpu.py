"""benchmarks.data_cpu --tiny: builds a small folder + webdataset copy and reads both through the
trainer's pipeline at 0/1/2 workers (the numbers mean nothing)."""

import json

from benchmarks.data_cpu import main, verdicts


def test_tiny_run(tmp_path):
    out = tmp_path / "d.json"
    assert (
        main(
            [
                "--tiny",
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--workers",
                "0,2",
                "--sources",
                "folder,webdataset-stream",
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert len(list((tmp_path / "data" / "tiny" / "folder").glob("*.jpg"))) == 40
    assert len(list((tmp_path / "data" / "tiny" / "shards").glob("*.tar"))) == 4
    got = {(r["source"], r["workers"]) for r in res["rows"]}
    assert got == {("folder", 0), ("folder", 2), ("webdataset-stream", 0), ("webdataset-stream", 2)}
    assert all(r["samples"] == 12 and r["samples_per_s"] > 0 for r in res["rows"])
    assert len(res["loadavg_before"]) == 3 and "mean nothing" in out.with_suffix(".md").read_text()


def test_workers_per_gpu_rule():
    rows = [{"source": "folder", "resolution": 512, "workers": 0, "ms_per_sample_wall": 50.0, "samples_per_s": 20.0}]
    v = verdicts(rows)
    # 7.08 samples/s x 0.05 s = 0.354 cores -> one worker; 73 x 0.05 = 3.65 -> four
    assert [x["workers_per_gpu"] for x in v] == [1, 4]
