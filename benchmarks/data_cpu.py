"""Data pipeline throughput on the CPU: a synthetic folder of 10,000 JPEGs and a webdataset copy,
read through the trainer's own pipeline (train/data: decode, resize, crop, caption, collate) with
0, 1 and 2 DataLoader workers; set against what a GPU training step consumes.

    python -m benchmarks.data_cpu                          # builds /tmp/hypersd-data-bench once, measures
    python -m benchmarks.data_cpu --images 2000 --batches 50 --out /tmp/d.json   # smaller
    python -m benchmarks.data_cpu --tiny --out /tmp/d.json # seconds: checks the code path (CI)

Measured: samples/s after a warm-up (the workers started and their first batches out), for
`folder` (files), `webdataset` (tar shards, images read by offset) and `webdataset-stream`
(`data.streaming`: webdataset's tar iterator), at the SD1.5 crop (512²) and the SDXL crop (1024²,
upscaled from the 768 x 576 sources, so a lower bound on real SDXL decode cost). "cost per sample"
is the main process's wall time per sample with 0 workers: one core's work per sample. No VAE:
the VAE runs on the GPU (or its latents come from the cache).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .report import RESULTS_DIR, markdown_table, write_json, write_text

# What one GPU consumes, samples/s per GPU at batch 4 (the anchors; see RESULTS.md §5).
GPU_ANCHORS = {
    "sd15": ("SD1.5 512², batch 4, H100 (figure quoted by issue #16)", 7.08),
    "sdxl": ("SDXL 1024², batch 4, H100 (figure quoted by issue #16)", 3.06),
}
GPU_ESTIMATES = {
    "sd15": ("SD1.5 512², H100 at 35 % MFU (RESULTS.md §4 estimate)", 73.0),
    "sdxl": ("SDXL 1024², H100 at 35 % MFU (RESULTS.md §4 estimate)", 8.7),
}


def make_data(root: Path, n: int, size=(768, 576), per_shard: int = 1000, distinct: int = 500) -> tuple[Path, Path]:
    """n JPEGs with .txt captions in root/folder and the same samples as tar shards in root/shards;
    reused when complete. ``distinct`` smooth random patterns (alternating landscape / portrait)
    are encoded once and each written n / distinct times under its own name (decoding cost is
    the same; generating 10,000 different JPEGs would take most of an hour on 2 shared cores)."""
    import io

    from PIL import Image

    folder, shards = root / "folder", root / "shards"
    done = root / f"done-{n}"
    if done.is_file():
        return folder, shards
    folder.mkdir(parents=True, exist_ok=True)
    shards.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jpegs = []
    for i in range(min(distinct, n)):
        a, b, c = rs.uniform(0.002, 0.02, 3)
        img = np.stack([127 + 120 * np.sin(a * xx + b * yy + k + c * 100) for k in range(3)], -1).astype(np.uint8)
        im = Image.fromarray(img)
        if i % 2:
            im = im.transpose(Image.Transpose.ROTATE_90)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    tar = None
    for i in range(n):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(shards / f"train-{i // per_shard:04d}.tar", "w")
        key, cap, data = f"img{i:05d}", f"a synthetic pattern number {i}", jpegs[i % len(jpegs)]
        (folder / f"{key}.jpg").write_bytes(data)
        (folder / f"{key}.txt").write_text(cap)
        for name, blob in ((f"{key}.jpg", data), (f"{key}.txt", cap.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tar.close()
    done.write_text("ok")
    return folder, shards


def measure(kind: str, path: Path, workers: int, resolution: int, batch: int, batches: int, warmup: int) -> dict:
    import torch

    from train.config import DataConfig
    from train.data import build_source

    cfg = DataConfig(
        kind="folder" if kind == "folder" else "webdataset",
        path=str(path),
        batch_size=batch,
        resolution=resolution,
        num_workers=workers,
        streaming=kind == "webdataset-stream",
    )
    model = SimpleNamespace(channels=3, vae=None, resolution=resolution, base_model="bench", scaling_factor=1.0)
    t_list = time.perf_counter()
    src = build_source(cfg, model, conditioner=None, device=torch.device("cpu"))
    list_s = time.perf_counter() - t_list
    for _ in range(warmup):
        src.next_raw()
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += src.next_raw()["n"]
    dt = time.perf_counter() - t0
    src._iter = None  # stops the workers
    return {
        "source": kind,
        "workers": workers,
        "resolution": resolution,
        "batch": batch,
        "samples": n,
        "seconds": round(dt, 3),
        "samples_per_s": round(n / dt, 2),
        "ms_per_sample_wall": round(1000 * dt / n, 3),
        "listing_seconds": round(list_s, 2),
    }


def verdicts(rows: list[dict]) -> list[dict]:
    """Workers per GPU: GPU samples/s x one core's seconds per sample (0-worker cost), rounded up."""
    out = []
    for model, res in (("sd15", 512), ("sdxl", 1024)):
        base = [r for r in rows if r["resolution"] == res and r["workers"] == 0]
        if not base:
            continue
        cost = max(r["ms_per_sample_wall"] for r in base) / 1000  # the slowest source
        best = max((r for r in rows if r["resolution"] == res), key=lambda r: r["samples_per_s"])
        for label, rate in (GPU_ANCHORS[model], GPU_ESTIMATES[model]):
            out.append(
                {
                    "gpu": label,
                    "gpu_samples_per_s": rate,
                    "cpu_ms_per_sample": round(cost * 1000, 2),
                    "cores_busy_per_gpu": round(rate * cost, 2),
                    "workers_per_gpu": max(1, math.ceil(rate * cost)),
                    "best_measured_samples_per_s": best["samples_per_s"],
                    "best_config": f"{best['source']}, {best['workers']} workers",
                }
            )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.data_cpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/tmp/hypersd-data-bench")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=100, help="measured batches per configuration")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--resolutions", default="512,1024")
    ap.add_argument("--sources", default="folder,webdataset,webdataset-stream")
    ap.add_argument("--tiny", action="store_true", help="40 small images, a few batches: code-path check")
    ap.add_argument("--out", default=str(RESULTS_DIR / "data_cpu.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.tiny:
        args.images, args.batches, args.warmup, args.resolutions = 40, 3, 1, "64"
    root = Path(args.data_dir) / ("tiny" if args.tiny else "full")
    t0 = time.perf_counter()
    folder, shards = make_data(
        root,
        args.images,
        (96, 72) if args.tiny else (768, 576),
        per_shard=10 if args.tiny else 1000,
        distinct=40 if args.tiny else 500,
    )
    build_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    rows = []
    for res in map(int, args.resolutions.split(",")):
        for kind in args.sources.split(","):
            for w in map(int, args.workers.split(",")):
                r = measure(kind, folder if kind == "folder" else shards, w, res, args.batch, args.batches, args.warmup)
                rows.append(r)
                print(
                    f"{kind:18s} {res:5d}px workers {w}: {r['samples_per_s']:8.1f} samples/s "
                    f"({r['ms_per_sample_wall']:.1f} ms/sample wall)",
                    flush=True,
                )
    from .machine import machine_info

    res = {
        "command": "python -m benchmarks.data_cpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tiny": args.tiny,
        "machine": machine_info(),
        "images": args.images,
        "distinct_images": 500 if not args.tiny else 40,
        "image_size": "768x576 / 576x768 JPEG q90" if not args.tiny else "96x72",
        "build_seconds": round(build_s, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "verdicts": verdicts(rows),
    }
    out = Path(args.out)
    write_json(out, res)
    md = [
        f"Command: `{res['command']}`; {res['machine'].get('cpu_model')}, {res['machine'].get('cpu_cores')} cores, "
        f"{res['machine'].get('date_utc')}; load average before {res['loadavg_before']}, after {res['loadavg_after']} "
        "(1/5/15 min).",
        "",
    ]
    if args.tiny:
        md += ["TINY MODE: the numbers verify the code path and mean nothing.", ""]
    md.append(
        markdown_table(
            ["source", "crop", "workers", "samples/s", "ms/sample (wall)"],
            [[r["source"], r["resolution"], r["workers"], r["samples_per_s"], r["ms_per_sample_wall"]] for r in rows],
        )
    )
    md.append(
        markdown_table(
            [
                "GPU consumer",
                "GPU samples/s",
                "CPU ms/sample (0 workers, slowest source)",
                "cores busy per GPU",
                "workers per GPU",
            ],
            [
                [
                    v["gpu"],
                    v["gpu_samples_per_s"],
                    v["cpu_ms_per_sample"],
                    v["cores_busy_per_gpu"],
                    v["workers_per_gpu"],
                ]
                for v in res["verdicts"]
            ],
        )
    )
    write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
