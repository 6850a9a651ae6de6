"""How much does the untrained embedded teacher lose with few DDIM steps, at each guidance scale?

Two questions behind the equal-call verdicts (benchmarks/RESULTS.md 1.0):
- is this a default where distillation matters: at 4 steps, trajectory error and Fréchet distance to
  the teacher's own many-step samples against those of 25 steps (the bar: 3x and 1.5x);
- can a LoRA that reproduces the teacher's many-step samples beat its few-step digits on adherence:
  not if those digits read *more* adherent than the many-step samples they approximate.

    python -m benchmarks.teacher_gap_embedded --cfg 3,5,7

Per guidance scale w: the teacher at DDIM 1-25 steps and cfg w against its DDIM 50 samples at cfg w
(same noise and prompts), judged by the independent reader (train.metrics.DigitReader) on the
large-n eval set (seed 777, 100 per digit). Writes results/teacher_gap_embedded.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

from .equal_calls_large_n_embedded import EVAL_SEED, PER_DIGIT, REFERENCE, large_n_evaluator
from .machine import machine_info
from .report import JUDGED, RESULTS_DIR, markdown_table, write_results

STEPS = (1, 2, 3, 4, 6, 8, 25)


def parse_cfgs(text: str) -> list[float]:
    """``"3,5,7"`` -> [3.0, 5.0, 7.0]; ValueError with what is wrong."""
    try:
        cfgs = [float(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"--cfg {text!r}: expected guidance scales separated by commas, e.g. 3,5,7") from None
    if not all(1 < c <= 30 for c in cfgs):
        raise ValueError(f"--cfg {text!r}: each guidance scale must be in (1, 30]")
    return cfgs


def summarise(rows: list[dict], ref: dict, n: int) -> dict:
    """The 4-vs-25-step ratios and each few-step row's adherence against the reference's."""
    from train.evaluate import adherence_gap

    by = {r["steps"]: r for r in rows}
    out = {}
    if 4 in by and 25 in by:
        f25 = by[25]["frechet_teacher"]
        out["traj_ratio_4_vs_25"] = round(by[4]["trajectory_error"] / by[25]["trajectory_error"], 2)
        out["frechet_ratio_4_vs_25"] = None if f25 <= 0 else round(by[4]["frechet_teacher"] / f25, 1)
    out["adherence_vs_reference"] = {}
    for k in (2, 4, 8):
        if k in by:
            g = adherence_gap(by[k]["adherence"], ref["adherence"], n)
            out["adherence_vs_reference"][str(k)] = {"minus_reference": g["lora_minus_teacher"], "of": n, "p": g["p"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", default="3", help="guidance scales, separated by commas (default 3)")
    ap.add_argument("--per-digit", type=int, default=PER_DIGIT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS_DIR / "teacher_gap_embedded.json"))
    a = ap.parse_args(argv)
    try:
        cfgs = parse_cfgs(a.cfg)
        ev = large_n_evaluator(a.per_digit, cfgs[0], a.threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = 10 * a.per_digit
    judged = lambda s: {m: round(float(s[m]), 4) for m in JUDGED}  # noqa: E731
    per_cfg = []
    for w in cfgs:
        if w != ev.teacher_cfg:
            ev.use_reference(w)
        ref = {"name": f"teacher DDIM {REFERENCE} cfg {w:g} (reference)", "steps": REFERENCE, "calls": 2 * REFERENCE}
        ref.update(judged(ev.score(EVAL_SEED, ev.refs[EVAL_SEED])), trajectory_error=0.0, frechet_teacher=0.0)
        rows = []
        for k, scores in ev.rows(None, STEPS, w, 0.0).items():
            r = {"name": f"teacher DDIM {k} cfg {w:g}", "steps": k, "calls": 2 * k, **judged(scores[0])}
            rows.append(r)
            print(
                f"{r['name']:<22} adherence {r['adherence']:.3f}  Frechet->teacher {r['frechet_teacher']:.3f}  "
                f"traj.err {r['trajectory_error']:.4f}  (reference reads {ref['adherence']:.3f})",
                flush=True,
            )
        per_cfg.append({"cfg": w, "reference": ref, "rows": rows, "summary": summarise(rows, ref, n)})
    command = f"python -m benchmarks.teacher_gap_embedded --cfg {a.cfg}"
    if a.per_digit != PER_DIGIT:
        command += f" --per-digit {a.per_digit}"
    tables = []
    for c in per_cfg:
        s = c["summary"]
        gaps = ", ".join(
            f"{k} steps {g['minus_reference']:+d} (p={g['p']:.3f})" for k, g in s["adherence_vs_reference"].items()
        )
        rows = [
            [r["name"], r["calls"], r["adherence"], r["frechet_teacher"], r["trajectory_error"]]
            for r in (c["reference"], *c["rows"])
        ]
        tables.append(
            f"### cfg {c['cfg']:g}\n\n"
            + markdown_table(["sampler", "calls", "adherence", "Fréchet → teacher 50", "traj. error"], rows)
            + f"\nAt 4 vs 25 steps: trajectory error x{s.get('traj_ratio_4_vs_25')}, Fréchet → teacher "
            f"x{s.get('frechet_ratio_4_vs_25')}. Few-step adherence minus the reference's, in digits of {n}: {gaps}.\n"
        )
    result = {"machine": machine_info(), "samples": n, "eval_seed": EVAL_SEED, "cfgs": per_cfg, "command": command}
    write_results(
        a.out, result, f"n = {n} samples (seed {EVAL_SEED})\n\n" + "\n".join(tables) + f"\nCommand: `{command}`\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
