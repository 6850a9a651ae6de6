"""benchmarks.demo_load, small: the demo in its own process with slow connections held and a few
parallel clients; every request answers, the server's thread count stays flat, it is up after."""

import json

import pytest

from benchmarks import demo_load


@pytest.mark.slow
def test_demo_load_small(tmp_path, tokenizer_path, monkeypatch):
    monkeypatch.setenv("HYPERSD_TOKENIZER", str(tokenizer_path))
    out = tmp_path / "demo_load.json"
    argv = ["--slow", "40", "--clients", "5", "--requests", "2", "--singles", "3", "--steps", "1", "--out", str(out)]
    assert demo_load.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["errors"] == [] and res["up_after"] and res["process_alive_after"]
    assert res["slow_held_during_single"] == 40 and res["open_connections_peak"] >= 40
    assert res["single_during_slow"]["n"] == 3 and res["parallel_during_slow"]["n"] == 10
    assert res["threads_peak"] <= res["threads_idle"] + 1, "no thread per connection"
    assert (tmp_path / "demo_load.md").read_text().count("Rerun: `python -m benchmarks.demo_load") == 1
