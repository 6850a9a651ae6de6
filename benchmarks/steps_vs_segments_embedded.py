"""Where the final LoRA loses guidance: each LoRA of a finished embedded run sampled at its own and
at more step counts than it has segments, and the final (k=1) LoRA at eta 0 / 0.5 / 1.

    python -m train --preset embedded --output outputs/embedded          # the run to probe
    python -m benchmarks.steps_vs_segments_embedded --run outputs/embedded

Judged by the independent reader (train.metrics.DigitReader); reference: teacher DDIM 25, cfg 3.
Writes results/steps_vs_segments_embedded.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .machine import machine_info
from .report import RESULTS_DIR, judged_rows, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="output folder of a finished embedded-preset run")
    ap.add_argument("--per-digit", type=int, default=10)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "steps_vs_segments_embedded.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from .quality_embedded import Evaluator

    run = Path(a.run)
    stages = {int(p.stem.rsplit("_k", 1)[1]): p for p in sorted((run / "lora").glob("stage*_tscd_k*.safetensors"))}
    final = run / "hypersd_lora.safetensors"
    if not final.is_file() or not stages:
        print(
            f"{run} has no finished embedded run (hypersd_lora.safetensors, lora/stage*_tscd_k*.safetensors)",
            file=sys.stderr,
        )
        return 2
    ev = Evaluator("embedded", a.per_digit, [a.seed], 25, 3.0)
    plan = [
        (f"k={k} stage LoRA", str(p), [s for s in (1, 2, 4, 8) if s >= k // 2], 0.0)
        for k, p in sorted(stages.items())
        if k > 1
    ]
    plan += [
        (f"final LoRA eta {eta:g}", str(final), [1, 2, 4, 8] if eta == 0 else [4, 8], eta) for eta in (0.0, 0.5, 1.0)
    ]
    rows = []
    for name, path, ks, eta in plan:
        rows += judged_rows(ev.rows(path, ks, 1.0, eta), "lora", name, 22)
    write_json(
        a.out,
        {
            "machine": machine_info(),
            "run": str(run),
            "samples": 10 * a.per_digit,
            "reference": "teacher DDIM 25, cfg 3",
            "rows": rows,
            "command": "python -m benchmarks.steps_vs_segments_embedded " + " ".join(argv or sys.argv[1:]),
        },
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
