"""Where along the trajectory does a K-step LoRA part from the teacher? The LoRA takes the first J of
its K steps (J = 0..K), the untrained teacher (DDIM, cfg 3) finishes on the reference's 50-step grid;
the teacher at equal calls (DDIM K/2, cfg 3) is probed the same way. With --alone, also each single
step alone: the teacher runs the reference's grid down to it and finishes after it (the step's local
error). Each row is judged against the teacher's DDIM 50 cfg 3 samples from the same noise
(adherence, Fréchet -> teacher, trajectory error) plus "flips": the share of images whose mean
brightness has the other sign than the reference's (on the polarity model: the digit drawn in the
other polarity).

    python -m benchmarks.first_steps_embedded --model polarity \\
        --lora RUN/lora/stage1_tscd_k8.safetensors --steps 8

Writes results/first_steps_embedded.{json,md}. About 11 min on one busy core at 30 per digit (300
samples); twice that with --alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .machine import machine_info
from .report import JUDGED, RESULTS_DIR, markdown_table, write_json, write_text

EVAL_SEED, REFERENCE, CFG = 777, 50, 3.0


def flips(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of images whose mean brightness has the other sign than the reference image's."""
    sign = lambda x: x.flatten(1).mean(1) > 0  # noqa: E731
    return float((sign(images) != sign(reference)).float().mean())


def handed_over(
    ev, lora_path: str | None, steps: int, first: int, lora_cfg: float = 1.0, start: int = 0
) -> torch.Tensor:
    """Images where ``lora_path`` (None: the teacher at ``lora_cfg``) takes steps ``start`` to ``first``
    of ``steps`` trailing steps and the teacher (DDIM, cfg 3) the rest, on the reference's grid (before
    ``start``: from the noise down to the LoRA's step ``start`` level)."""
    from hypersd_core.lora_formats import load_lora
    from hypersd_core.lora_merge import LoraMerge
    from hypersd_core.samplers import get_sigmas_tscd, sample_tscd
    from hypersd_core.schedule import unit_noise_to_ve
    from train.sampling import guided_denoiser

    _, prompts, noise = ev.sets[EVAL_SEED]
    cond, added = ev.cond.encode(list(prompts))
    uncond, added_u = ev.cond.uncond(len(prompts))
    sched, pred = ev.m.schedule, ev.m.prediction_type

    def model(cfg: float):
        guided = cfg != 1
        return guided_denoiser(
            ev.unet, cond, uncond if guided else None, cfg, sched, pred, added, added_u if guided else None
        )

    head, grid = get_sigmas_tscd(steps, sched), get_sigmas_tscd(REFERENCE, sched)
    x = unit_noise_to_ve(noise, head[0])
    with torch.no_grad():
        if start:
            x = sample_tscd(
                model(CFG),
                x,
                torch.cat([grid[grid > head[start]], head[start : start + 1]]),
                eta=0.0,
                schedule=sched,
                disable=True,
            )
        if first > start:
            merge = None
            if lora_path:
                sd, meta = load_lora(lora_path)
                merge = LoraMerge(ev.unet, sd, 1.0, metadata=meta)
            try:
                x = sample_tscd(model(lora_cfg), x, head[start : first + 1], eta=0.0, schedule=sched, disable=True)
            finally:
                if merge is not None:
                    merge.remove()
        if first < steps:
            rest = torch.cat([head[first : first + 1], grid[grid < head[first]]]) if first else grid
            x = sample_tscd(model(CFG), x, rest, eta=0.0, schedule=sched, disable=True)
    return x.float().clamp(-1, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lora", required=True, help="a K-step LoRA file (e.g. a run's lora/stage1_tscd_k8.safetensors)")
    ap.add_argument("--steps", type=int, default=8, help="K, the LoRA's step count (even: the teacher takes K/2)")
    ap.add_argument("--model", default=None, help='the embedded teacher: a packaged name ("polarity") or a folder')
    ap.add_argument("--per-digit", type=int, default=30)
    ap.add_argument(
        "--alone",
        action="store_true",
        help="also each single step alone (the teacher before and after it): its local error; doubles the time",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "first_steps_embedded.json"))
    a = ap.parse_args(argv)
    if not Path(a.lora).is_file():
        print(f"error: --lora {a.lora}: no such file", file=sys.stderr)
        return 2
    if a.steps < 2 or a.steps % 2:
        print(
            f"error: --steps must be even and >= 2 (the teacher at equal calls takes half), got {a.steps}",
            file=sys.stderr,
        )
        return 2
    from .equal_calls_large_n_embedded import large_n_evaluator

    try:
        ev = large_n_evaluator(a.per_digit, CFG, a.threads, a.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref = ev.refs[EVAL_SEED]
    rows = []

    def add(name: str, sampler: str, first: int, of: int, images: torch.Tensor) -> None:
        s = ev.score(EVAL_SEED, images)
        r = {"name": name, "sampler": sampler, "first": first, "of": of}
        r.update(
            {m: round(float(s[m]), 4) + 0.0 for m in JUDGED}, flips=round(flips(images, ref), 4)
        )  # + 0.0: no "-0.0"
        rows.append(r)
        print(f"{name:<44} " + "  ".join(f"{m} {r[m]:.4f}" for m in (*JUDGED, "flips")), flush=True)

    half = a.steps // 2
    for j in range(a.steps + 1):
        add(f"LoRA {j} of {a.steps} steps, then the teacher", "lora", j, a.steps, handed_over(ev, a.lora, a.steps, j))
    for j in range(1, half + 1):
        name = f"teacher DDIM {half} cfg 3, {j} of {half} steps, then 50-grid"
        add(name, "teacher", j, half, handed_over(ev, None, half, j, CFG))
    if a.alone:
        for j in range(1, a.steps + 1):
            name = f"LoRA step {j} of {a.steps} alone"
            add(name, "lora alone", j, a.steps, handed_over(ev, a.lora, a.steps, j, start=j - 1))
        for j in range(1, half + 1):
            name = f"teacher DDIM {half} cfg 3, step {j} of {half} alone"
            add(name, "teacher alone", j, half, handed_over(ev, None, half, j, CFG, start=j - 1))
    command = "python -m benchmarks.first_steps_embedded " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "machine": machine_info(),
        "samples": 10 * a.per_digit,
        "eval_seed": EVAL_SEED,
        "model": a.model or "embedded (default)",
        "reference": f"teacher DDIM {REFERENCE} cfg {CFG:g}",
        "lora": a.lora,
        "rows": rows,
        "command": command,
    }
    write_json(a.out, result)
    table = markdown_table(
        ["sampler", "adherence ↑", "Fréchet → teacher ↓", "traj. error ↓", "flips vs reference ↓"],
        [
            [
                r["name"],
                *(f"{r[m]:.3f}" for m in ("adherence", "frechet_teacher")),
                f"{r['trajectory_error']:.4f}",
                f"{r['flips']:.3f}",
            ]
            for r in rows
        ],
    )
    write_text(
        Path(a.out).with_suffix(".md"),
        f"n = {result['samples']} samples (seed {EVAL_SEED}), teacher: {result['model']}\n\n{table}\nCommand: `{command}`\n",
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
