"""benchmarks/realtime_gpu.py --tiny on the CPU: every section runs and writes sane JSON
(SD1.5 and SDXL code paths, eager; the compiled variants need minutes on a CPU and a GPU to mean anything)."""

import json

import pytest


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_tiny_benchmark_runs_and_writes_json(tmp_path, model, tokenizer_path):
    from benchmarks.realtime_gpu import main

    out = tmp_path / "rt.json"
    assert main(["--tiny", "--no-compile", "--models", model, "--warmup", "0", "--iters", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tiny"] and (tmp_path / "rt.md").is_file()
    r = res["models"][model]
    for comp in ("text_encoder", "unet", "vae_decode", "taesd_decode"):
        assert "error" not in r["components"][comp], r["components"][comp]
        assert r["components"][comp]["eager"]["ms"] > 0 and r["components"][comp]["tflop"] > 0
    for key in ("eager_full_vae", "eager_tiny_vae"):
        e = r["end_to_end"][key]
        assert "error" not in e, e
        assert e["fresh_prompt"]["images_per_s"] > 0
        assert e["text_encoder_calls_per_image"] == 1.0, "a fresh prompt costs exactly one encode"
    assert "error" not in r["diffusers_tcd"], r["diffusers_tcd"]
    assert r["diffusers_tcd"]["fresh_prompt"]["ms"] > 0
