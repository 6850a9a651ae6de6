"""CPU micro-benchmarks that are honest on a CPU (the machine is named in the output):

- the TSCD sampler's own math per step (zero-cost model) against one UNet call, for the embedded
  digits UNet (1x16x16) and a medium SD1.5-shaped UNet (32x32 latents), and end-to-end sampling
  through hypersd_core vs diffusers' pipeline with TCDScheduler (the same functions as speed_gpu.py);
- one training step of the trainer's TSCD stage vs the LCM-LoRA-style baseline step on the
  embedded model at the preset's batch size (the same harness as speed_gpu.py's training section).

    python -m benchmarks.cpu_micro            # results/cpu_micro.json + .md
    python -m benchmarks.cpu_micro --quick    # one iteration, small batch: checks the code path
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, sampler_share_table, write_json, write_text
from .speed_gpu import inference_section
from .train_harness import measure_method
from hypersd_models.specs import SD15, ModelSpec, embedded_spec

# SD1.5's block layout at a fifth of its width, 256² pixels -> 32² latents: a "medium" CPU UNet.
MEDIUM = ModelSpec(
    "sd15-fifth-width",
    dict(SD15, block_out_channels=(64, 128, 256, 256), attention_head_dim=8, cross_attention_dim=768),
    256,
)


def run(quick: bool, threads: int) -> dict:
    torch.set_num_threads(threads)
    warmup, iters = (0, 1) if quick else (1, 5)
    res: dict = {"machine": machine_info(), "quick": quick, "torch_threads": threads, "inference": [], "training": []}
    t0 = time.time()
    for spec, resolution in ((embedded_spec(), 16), (MEDIUM, 64 if quick else 256)):
        print(f"inference {spec.name}", flush=True)
        res["inference"] += inference_section(
            spec,
            device=torch.device("cpu"),
            dtype=torch.float32,
            resolution=resolution,
            steps_list=(1, 2) if quick else (1, 2, 4, 8),
            eta=0.3,
            warmup=warmup,
            iters=iters,
        )
    batch = 4 if quick else 32  # the embedded preset's batch size
    for method in ("tscd", "lcm_shared", "lcm_copy"):
        print(f"training {method}", flush=True)
        r = measure_method(
            method,
            embedded_spec(),
            batch=batch,
            resolution=16,
            device="cpu",
            mixed_precision="no",
            weight_dtype=torch.float32,
            rank=8,
            gradient_checkpointing=False,
            warmup=warmup,
            iters=iters,
            segments=8,
        )
        res["training"].append(r)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def markdown(res: dict) -> str:
    md = [f"Machine: {describe(res['machine'])}; torch threads {res['torch_threads']}\n\n"]
    if res["quick"]:
        md.append("**QUICK MODE: one iteration; the numbers check the code path and mean nothing.**\n\n")
    inf = [r for r in res["inference"] if "seconds_per_image" in r]
    md.append("Sampling, batch 1, cfg 1, eta 0.3 (TCD timesteps):\n\n")
    md.append(
        markdown_table(
            ["model", "steps", "path", "ms/image", "UNet calls", "overhead ms", "overhead share"],
            [
                [
                    r["model"],
                    r["steps"],
                    r["path"],
                    1e3 * r["seconds_per_image"],
                    r["unet_calls_per_image"],
                    1e3 * r["overhead_seconds_per_image"],
                    f"{100 * r['overhead_share']:.2f}%",
                ]
                for r in inf
            ],
        )
    )
    sm = [r for r in res["inference"] if "sampler_seconds_per_step" in r]
    md.append("\nSampler math alone per step (zero-cost model) vs one isolated UNet call:\n\n")
    md.append(sampler_share_table(sm))
    md.append("\nOne LoRA training step on the embedded model (fp32, rank 8, cfg 3-8 teacher guidance):\n\n")
    tr = res["training"]
    base = next((r for r in tr if r["method"] == "lcm_shared" and "samples_per_s" in r), None)
    md.append(
        markdown_table(
            ["method", "batch", "s/step", "samples/s", "vs LCM (shared teacher)"],
            [
                [
                    r["method"],
                    r["batch"],
                    r.get("seconds_per_step"),
                    r.get("samples_per_s"),
                    f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base and "samples_per_s" in r else "-",
                ]
                for r in tr
            ],
        )
    )
    return "".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res = run(args.quick, args.threads)
    res["command"] = "python -m benchmarks.cpu_micro " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out) if args.out else RESULTS_DIR / ("cpu_micro_quick.json" if args.quick else "cpu_micro.json")
    write_json(out, res)
    md = markdown(res)
    write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
