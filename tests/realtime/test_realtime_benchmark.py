"""benchmarks/realtime_gpu.py --tiny on the CPU: every section runs and writes sane JSON
(SD1.5 and SDXL code paths, eager; the compiled variants need minutes on a CPU and a GPU to mean anything)."""

import json

import pytest


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_tiny_benchmark_runs_and_writes_json(tmp_path, model, tokenizer_path):
    from benchmarks.realtime_gpu import main

    out = tmp_path / "rt.json"
    common = ["--tiny", "--no-compile", "--models", model, "--warmup", "0", "--iters", "1", "--out", str(out)]
    if model == "sd15":  # sections as separate commands, merged into one file (the GPU's 10-minute calls)
        assert main(common + ["--sections", "components"]) == 0
        assert main(common + ["--sections", "end_to_end", "--vae", "tiny", "--merge"]) == 0
        assert main(common + ["--sections", "end_to_end", "diffusers", "--vae", "full", "--merge"]) == 0
    else:
        assert main(common) == 0
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


def test_tiny_comfyui_benchmark_runs(tmp_path):
    """benchmarks/realtime_comfyui.py --tiny in its own process (it imports ComfyUI's `nodes`)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not os.environ.get("COMFYUI_PATH"):
        pytest.skip("COMFYUI_PATH is unset: point it to a ComfyUI copy with this repo in custom_nodes/")
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "comfy.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.realtime_comfyui", "--tiny", "--iters", "1", "--out", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(repo)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    v = json.loads(out.read_text())["variants"]
    assert v["no_compile"]["ms"] > 0 and v["HyperSDRealtimeCompile"]["ms"] > 0
    assert "skipped" in v["TorchCompileModel_inductor"]
    assert "CUDA graphs need a CUDA GPU" in proc.stderr + proc.stdout
