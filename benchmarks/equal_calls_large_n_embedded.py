"""Do the equal-call verdicts hold at 1,000 samples? The trainer's eval (200 samples) cannot tell a
1-2 digit adherence gap from noise; this re-judges chosen LoRAs against the untrained teacher at
equal model calls on a larger eval set (default 100 per digit, seed 777: not the trainer's set),
with the independent reader, Fréchet -> teacher DDIM 50 cfg 3 and trajectory error against it.

    python -m benchmarks.equal_calls_large_n_embedded \\
        --lora "k=4 stage=RUN/lora/stage2_tscd_k4.safetensors@4" \\
        --lora "final eta 1=RUN/hypersd_lora.safetensors@1,2,4,8@1"

Each ``--lora NAME=FILE@STEPS[@ETA[@CFG]]`` is sampled at cfg 1 (one call per step) unless CFG is
given (then two calls a step, as for the teacher); the teacher rows are
DDIM 1 step at cfg 1 (1 call) and DDIM k steps at cfg 3 (2k calls). Every LoRA row is compared with
the teacher at its call count: who wins each measure, and the adherence gap in digits with its
two-sided Fisher exact p-value. ``--match`` also scores the teacher at cfg 3 on the trainer's step
ladder and gives each LoRA the fewest teacher steps whose trajectory error is as low ("teacher steps
to match": the speed-up). Writes results/equal_calls_large_n_embedded.{json,md}. About 10 min on one
CPU core for the reference and a handful of rows.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .machine import machine_info
from .report import JUDGED, RESULTS_DIR, judged_table, markdown_table, split_named, write_json, write_text

EVAL_SEED, PER_DIGIT, REFERENCE, CFG = 777, 100, 50, 3.0
SEEDED = re.compile(r"^(?P<base>.+?) \(seed (?P<seed>\d+)\)$")  # "k=4 stage (seed 1)"


def parse_lora(spec: str) -> tuple[str, str, list[int], float, float]:
    """``NAME=FILE@STEPS[@ETA[@CFG]]`` -> (name, file, steps, eta, cfg); ValueError with what is wrong."""
    name, rest = split_named(spec)
    parts = rest.split("@")
    if not name or len(parts) not in (2, 3, 4) or not parts[0]:
        raise ValueError(
            f"--lora {spec!r}: expected NAME=FILE@STEPS[@ETA[@CFG]], e.g. 'final=run/hypersd_lora.safetensors@2,4'"
        )
    try:
        steps = [int(s) for s in parts[1].split(",")]
        eta = float(parts[2]) if len(parts) >= 3 else 0.0
        cfg = float(parts[3]) if len(parts) == 4 else 1.0
    except ValueError:
        raise ValueError(f"--lora {spec!r}: STEPS must be integers separated by commas, ETA and CFG numbers") from None
    if not steps or min(steps) < 1 or not 0 <= eta <= 1 or not 1 <= cfg <= 30:
        raise ValueError(f"--lora {spec!r}: steps must be >= 1, eta in [0, 1] and cfg in [1, 30]")
    if not Path(parts[0]).is_file():
        raise ValueError(f"--lora {spec!r}: no such file {parts[0]}")
    return name, parts[0], steps, eta, cfg


def check_embedded(model: str, flag: str) -> None:
    """ValueError (one line) unless ``model`` names an embedded teacher (a packaged name or a folder)."""
    from hypersd_models.embedded import embedded_folder, packaged_embedded

    if not (embedded_folder(model) / "meta.json").is_file():
        raise ValueError(
            f"{flag} {model!r}: not an embedded model folder (no meta.json); "
            f"packaged ones: {', '.join(packaged_embedded()) or 'none'}"
        )


def large_n_evaluator(per_digit: int, cfg: float = CFG, threads: int = 1, model: str | None = None):
    """The large-n eval set (seed ``EVAL_SEED``, ``per_digit`` per class) with the embedded teacher's
    (``model``: a packaged name such as "polarity" or a folder; None: the default) DDIM
    ``REFERENCE``-step samples at ``cfg`` as the reference; ValueError for a bad ``per_digit`` or model."""
    if per_digit < 1:
        raise ValueError(f"--per-digit must be >= 1, got {per_digit}")
    if model is not None:
        check_embedded(model, "--model")
    torch.set_num_threads(threads)
    from .quality_embedded import Evaluator

    return Evaluator("embedded", per_digit, [EVAL_SEED], REFERENCE, cfg, path=model)


def teacher_calls(rows: list[dict], match: bool = False) -> list[tuple[int, float]]:
    """(steps, cfg) of the teacher rows needed at the LoRA rows' call counts (and, with ``match``,
    at cfg 3 on the trainer's "steps to match" ladder)."""
    from train.evaluate import TEACHER_LADDER, teacher_at

    need = {at for r in rows if (at := teacher_at(r["calls"], CFG))}
    if match:
        need |= {(k, CFG) for k in TEACHER_LADDER}
    return sorted(need, key=lambda t: (2 * t[0] if t[1] != 1 else t[0], t[1]))


def to_match(trajectory_error: float, teacher_rows: list[dict]) -> dict:
    """The fewest teacher DDIM steps at cfg 3 (and their calls) with a trajectory error as low."""
    from train.evaluate import steps_to_match

    k = steps_to_match({r["name"]: r for r in teacher_rows}, {"trajectory_error": trajectory_error}, CFG)
    return {"teacher_steps_to_match": k, "teacher_calls_to_match": None if k is None else 2 * k}


def match_cell(row: dict) -> str:
    k = row["teacher_steps_to_match"]
    return "more than the ladder" if k is None else f"{k} ({row['teacher_calls_to_match']} calls)"


def compare(lora: dict, teacher: dict, n: int) -> dict:
    from train.evaluate import adherence_gap, lora_wins

    return {
        "lora": lora["name"],
        "teacher": teacher["name"],
        "calls": lora["calls"],
        "wins": lora_wins(lora, teacher),
        "adherence_digits": adherence_gap(lora["adherence"], teacher["adherence"], n),
    }


def over_seeds(lora_rows: list[dict], comparisons: list[dict], teacher_rows: list[dict] | None = None) -> list[dict]:
    """LoRAs named ``NAME (seed N)`` (one per training seed): per NAME and step count, the mean and
    95 % CI (Student t) of each measure over the seeds, and in how many seeds the LoRA beats the
    teacher at equal calls on each; with ``teacher_rows`` (``--match``), the teacher steps that
    match the mean trajectory error."""
    from train.evaluate import JUDGED as DIRECTIONS

    from .quality_embedded import summarise

    wins = {c["lora"]: c["wins"] for c in comparisons}
    groups: dict[str, list[dict]] = {}
    for r in lora_rows:
        m = SEEDED.match(r.get("lora", ""))
        if m:  # the row's label without the seed tag: "k=4 stage, 4 steps"
            groups.setdefault(r["name"].replace(r["lora"], m["base"], 1), []).append(r)
    out = []
    for name, rows in groups.items():
        if len(rows) < 2:
            continue
        g = {"name": name, "calls": rows[0]["calls"], "seeds": len(rows)}
        for measure, _ in DIRECTIONS:
            g[measure] = summarise([r[measure] for r in rows])
        g["lora_wins_in_seeds"] = {
            measure: sum(bool(wins.get(r["name"], {}).get(measure)) for r in rows) for measure, _ in DIRECTIONS
        }
        if teacher_rows is not None:
            g.update(to_match(g["trajectory_error"]["mean"], teacher_rows))
        out.append(g)
    return out


def seeds_table(groups: list[dict]) -> str:
    from train.evaluate import JUDGED as DIRECTIONS

    label = {"trajectory_error": "traj. error", "frechet_teacher": "Fréchet → teacher", "adherence": "adherence"}
    heads = [f"{label[m]} {'↑' if up else '↓'}" for m, up in DIRECTIONS]
    match = bool(groups) and "teacher_steps_to_match" in groups[0]
    return markdown_table(
        [
            "LoRA (mean ± 95 % CI over training seeds)",
            "calls",
            "seeds",
            *heads,
            "seeds where the LoRA wins (same order)",
            *(["teacher steps to match (mean traj. error)"] if match else []),
        ],
        [
            [
                g["name"],
                g["calls"],
                g["seeds"],
                *(f"{g[m]['mean']:.3f} ± {g[m]['ci95']:.3f}" for m, _ in DIRECTIONS),
                " / ".join(str(g["lora_wins_in_seeds"][m]) for m, _ in DIRECTIONS),
                *([match_cell(g)] if match else []),
            ]
            for g in groups
        ],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lora", action="append", required=True, help="NAME=FILE@STEPS[@ETA] (repeat)")
    ap.add_argument("--per-digit", type=int, default=PER_DIGIT)
    ap.add_argument(
        "--model",
        default=None,
        help='the embedded teacher: a packaged name ("polarity") or a folder; default: the default',
    )
    ap.add_argument(
        "--match",
        action="store_true",
        help="also score the teacher at cfg 3 on the trainer's step ladder: teacher steps to match each LoRA",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "equal_calls_large_n_embedded.json"))
    a = ap.parse_args(argv)
    try:
        loras = [parse_lora(s) for s in a.lora]
        ev = large_n_evaluator(a.per_digit, CFG, a.threads, a.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = 10 * a.per_digit
    judged = lambda s: {m: round(float(s[0][m]), 4) for m in JUDGED}  # noqa: E731

    def add(rows, name, kind, steps, calls, eta, scores, **extra):
        r = {"name": name, "kind": kind, "steps": steps, "calls": calls, "eta": eta, **judged(scores), **extra}
        rows.append(r)
        print(
            f"{name:<34} {calls:>3} calls: adherence {r['adherence']:.3f}  Frechet->teacher "
            f"{r['frechet_teacher']:.3f}  traj.err {r['trajectory_error']:.4f}",
            flush=True,
        )

    lora_rows: list[dict] = []
    for name, path, steps, eta, cfg in loras:
        for k, scores in ev.rows(path, steps, cfg, eta).items():
            label = f"{name}, {k} steps" + (f", eta {eta:g}" if eta else "") + (f", cfg {cfg:g}" if cfg != 1 else "")
            calls = 2 * k if cfg != 1 else k  # guidance runs the model twice a step
            add(lora_rows, label, "lora", k, calls, eta, scores, lora=name, cfg=cfg)
    teacher_rows: list[dict] = []
    for k, w in teacher_calls(lora_rows, a.match):
        add(
            teacher_rows,
            f"teacher DDIM {k} cfg {w:g}",
            "teacher",
            k,
            2 * k if w != 1 else k,
            0.0,
            ev.rows(None, [k], w, 0.0)[k],
            cfg=w,
        )
    if a.match:
        for r in lora_rows:
            r.update(to_match(r["trajectory_error"], teacher_rows))
    ref = {"name": f"teacher DDIM {REFERENCE} cfg {CFG:g} (reference)", "kind": "reference", "steps": REFERENCE}
    ref.update(calls=2 * REFERENCE, eta=0.0, **judged([ev.score(EVAL_SEED, ev.refs[EVAL_SEED])]))
    by_calls = {r["calls"]: r for r in teacher_rows}
    comparisons = [compare(r, by_calls[r["calls"]], n) for r in lora_rows if r["calls"] in by_calls]
    command = "python -m benchmarks.equal_calls_large_n_embedded " + " ".join(f'--lora "{s}"' for s in a.lora)
    if a.per_digit != PER_DIGIT:
        command += f" --per-digit {a.per_digit}"
    if a.model is not None:
        command += f" --model {a.model}"
    if a.match:
        command += " --match"
    result = {
        "machine": machine_info(),
        "samples": n,
        "eval_seed": EVAL_SEED,
        "model": a.model or "embedded (default)",
        "data_layout": ev.layout,
        "reference": ref,
        "rows": [ref, *teacher_rows, *lora_rows],
        "comparisons": comparisons,
        "over_seeds": over_seeds(lora_rows, comparisons, teacher_rows if a.match else None),
        "command": command,
    }
    write_json(a.out, result)
    table = judged_table(result["rows"], ("sampler", "name"), ("calls", "calls"), frechet_digits=3)
    named = {r["name"]: r for r in lora_rows}
    verdicts = markdown_table(
        [
            "LoRA",
            "vs teacher at equal calls",
            "traj. error",
            "Fréchet → teacher",
            "adherence (digits of n, p)",
            *(["teacher steps to match (traj. error)"] if a.match else []),
        ],
        [
            [
                c["lora"],
                c["teacher"],
                "LoRA" if c["wins"]["trajectory_error"] else "teacher",
                "LoRA" if c["wins"]["frechet_teacher"] else "teacher",
                f"{'LoRA' if c['wins']['adherence'] else 'teacher'} "
                f"({c['adherence_digits']['lora_minus_teacher']:+d} of {n}, p={c['adherence_digits']['p']:.3f})",
                *([match_cell(named[c["lora"]])] if a.match else []),
            ]
            for c in comparisons
        ],
    )
    seeds = f"{seeds_table(result['over_seeds'])}\n" if result["over_seeds"] else ""
    write_text(
        Path(a.out).with_suffix(".md"),
        f"n = {n} samples (seed {EVAL_SEED}), teacher: {result['model']}\n\n{table}\n{verdicts}\n{seeds}Command: `{command}`\n",
    )
    print(verdicts)
    if seeds:
        print(seeds)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
