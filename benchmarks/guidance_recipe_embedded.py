"""Does the final LoRA keep guidance at 2/4/8 steps? Final LoRAs of finished embedded runs that
differ only in their last stage, sampled at 1/2/4/8 steps (cfg 1, eta 0) from the trainer's own
eval set (200 samples, seed 4321), judged by the independent reader against teacher DDIM 50, cfg 3.

    python -m train --preset embedded --output runs/before \\
        --config benchmarks/configs/guidance/before.yaml --set eval.enabled=false
    ...                                                   # one run per recipe (configs below)
    python -m benchmarks.guidance_recipe_embedded --run "before=runs/before" --run "keep 0.5=runs/keep"

The recipes (benchmarks/configs/guidance/): ``before.yaml`` is the embedded preset's stages before
keep_segments; the others change only the last (k=1) stage: keep_segments [2, 4, 8] at keep_fraction
0.5 with guidance U[3, 3] (keep050_cfg3) or U[3, 6] (keep050_cfg6); 0.75 with U[3, 6] is the
embedded preset itself; progressive_keep075_cfg6 also has the k=4 and k=2 stages keep the earlier
segment counts. Writes results/guidance_recipe_embedded.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .machine import machine_info
from .report import RESULTS_DIR, judged_rows, judged_table, split_named, write_json, write_text

STEPS = (1, 2, 4, 8)
EVAL_SEED, PER_DIGIT, REFERENCE = 4321, 20, 50


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=FOLDER of a finished embedded run (repeat)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "guidance_recipe_embedded.json"))
    a = ap.parse_args(argv)
    runs = []
    for spec in a.run:
        name, folder = split_named(spec)
        lora = Path(folder) / "hypersd_lora.safetensors"
        if not name or not lora.is_file():
            print(
                f"--run {spec!r}: expected NAME=FOLDER of a finished run (with hypersd_lora.safetensors)",
                file=sys.stderr,
            )
            return 2
        runs.append((name, lora))
    torch.set_num_threads(a.threads)
    from .quality_embedded import Evaluator

    ev = Evaluator("embedded", PER_DIGIT, [EVAL_SEED], REFERENCE, 3.0)
    rows = []
    for name, lora in runs:
        rows += judged_rows(ev.rows(str(lora), STEPS, 1.0, 0.0), "recipe", name, 28)
    command = "python -m benchmarks.guidance_recipe_embedded " + " ".join(f'--run "{s}"' for s in a.run)
    if Path(a.out).resolve() != (RESULTS_DIR / "guidance_recipe_embedded.json").resolve():
        command += f" --out {a.out}"
    result = {
        "machine": machine_info(),
        "samples": 10 * PER_DIGIT,
        "eval_seed": EVAL_SEED,
        "reference": f"teacher DDIM {REFERENCE}, cfg 3",
        "rows": rows,
        "command": command,
    }
    write_json(a.out, result)
    table = judged_table(rows, ("recipe (last stage)", "recipe"), ("steps", "steps"))
    write_text(Path(a.out).with_suffix(".md"), f"{table}\n\nCommand: `{command}`\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
