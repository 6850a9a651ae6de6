"""speed_gpu --tiny on the CPU: the inference, compile and training code paths run on tiny
SD1.5- and SDXL-shaped UNets and write results with finite values (the numbers mean nothing)."""

import json
import math

import torch

from benchmarks.speed_gpu import compile_section, main, scaling_section
from hypersd_models.specs import SPECS


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_inference_paths_tiny(tmp_path):
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "--tiny",
                "--models",
                "sd15-tiny,sdxl-tiny",
                "--steps",
                "1,2",
                "--sections",
                "inference",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["tiny"] and "mean nothing" in res["note"]
    paths = {(r["model"], r["steps"], r["path"]) for r in res["inference"]}
    for model in ("sd15-tiny", "sdxl-tiny"):
        for steps in (1, 2):
            assert (model, steps, "diffusers pipeline + TCDScheduler") in paths
            assert (model, steps, "sampler math alone (per step)") in paths
    for r in res["inference"]:
        if "seconds_per_image" in r:
            assert r["unet_calls_per_image"] == r["steps"]  # cfg 1: one UNet call per step, both paths
            assert finite(r["seconds_per_image"]) and r["seconds_per_image"] > 0
            assert 0 <= r["unet_seconds_per_image"] <= r["seconds_per_image"]
        else:
            assert 0 < r["sampler_share_of_step"] < 1
    assert "mean nothing" in out.with_suffix(".md").read_text()


def test_sampler_loop_is_one_graph_tiny():
    res = compile_section(
        SPECS["sd15-tiny"], device=torch.device("cpu"), dtype=torch.float32, resolution=64, steps=4, eta=0.3, full=False
    )
    r = res["sampler_standin_denoiser"]
    assert r["fullgraph_compile"] == "ok"
    assert r["explain_graph_break_count"] == 0 and r["explain_graph_count"] == 1
    assert r["fullgraph_max_abs_diff_vs_eager"] < 1e-5


def test_training_paths_tiny(tmp_path):
    out = tmp_path / "t.json"
    assert main(["--tiny", "--models", "sdxl-tiny", "--sections", "training", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["training"]
    got = {(r["method"], r["gradient_checkpointing"]) for r in rows}
    assert got == {(m, gc) for m in ("tscd", "lcm_shared", "lcm_copy", "tscd_adv") for gc in (False, True)}
    for r in rows:  # tscd_adv with gradient checkpointing included (it once failed in backward)
        assert "error" not in r, r
        assert finite(r["samples_per_s"]) and r["samples_per_s"] > 0
        assert r["lora_params"] > 0 and r["lora_rank"] == 4


def test_scaling_rows_tiny():
    rows = scaling_section(
        SPECS["sd15-tiny"],
        device="cpu",
        mixed_precision="no",
        dtype=torch.float32,
        batches=(1, 2),
        resolutions=(32,),
        rank=4,
        gradient_checkpointing=False,
        warmup=0,
        iters=1,
    )
    assert [(r["batch"], r["resolution"]) for r in rows] == [(1, 32), (2, 32)]
    assert all(finite(r["samples_per_s"]) for r in rows)
