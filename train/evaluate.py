"""Metrics of a trained student on the embedded digits (see metrics.py), as a dict and a table.

Every LoRA row is compared with the untrained teacher at the SAME number of model calls (UNet
evaluations; DDIM with cfg > 1 costs two per step): 1 call = teacher 1 step cfg 1, 2k calls =
teacher k steps at the guided cfg. The judge is the independent reader (metrics.DigitReader), not
the embedded classifier, which is the feedback reward.

``python -m train.evaluate --retable RUN_DIR`` recomputes the equal-call comparisons, the verdict
and table.txt of a finished run from its metrics.json, without sampling again."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import UserError
from .export import onestep_timestep
from .grids import generate
from .lora import load_lora_tensors, lora_tensors
from .metrics import classifier_features, digit_eval_set, layout_judge, score_images

# Teacher DDIM steps at the guided cfg scored for "teacher steps to match" (plus the reference).
TEACHER_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 25)


def teacher_row(steps: int, cfg: float) -> str:
    return f"teacher DDIM {steps} cfg {cfg:g}"


def _log(line: str) -> None:
    print(line, flush=True)


def evaluate_digits(trainer, stage, log=_log) -> dict:
    """The teacher at several step counts and guidances and the student at eval.steps (final LoRA)
    and at each stage's own step count (stage LoRAs), scored from the same noise and prompts."""
    e, m = trainer.cfg.eval, trainer.model
    clf = m.extras.get("classifier")
    if clf is None:
        raise ValueError("eval needs the digit classifier (model.kind embedded or tiny)")
    clf = clf.to(trainer.acc.device)
    res = m.unet.config.sample_size
    labels, prompts, noise = digit_eval_set(e.per_digit, res, e.seed, m.unet.config.in_channels)
    noise = noise.to(trainer.acc.device)
    layout = m.extras.get("data_layout", "digits")
    reader, held_out = layout_judge(res, layout)
    real = {
        "reader": reader.features(held_out),
        "reward": classifier_features(clf, held_out.to(trainer.acc.device)),
    }
    kw = dict(schedule=m.schedule, prediction_type=m.prediction_type, decode=trainer.decode)
    w = e.teacher_cfg
    ladder = sorted({k for k in TEACHER_LADDER if k < e.reference_steps} | {e.teacher_steps})
    cfg1 = sorted(set(e.steps) | {e.teacher_steps})
    stage_loras = [
        (i, s)
        for i, s in enumerate(trainer.cfg.stages)
        if s.name == "tscd"
        and i < len(trainer.cfg.stages) - 1
        and (trainer.out / "lora" / f"stage{i + 1}_{s.name}_k{s.segments}.safetensors").is_file()
    ]
    onestep = onestep_timestep(trainer.cfg, stage.metadata())  # the final LoRA's one-step sampler, if any
    total = 1 + len(ladder) + len(cfg1) + len(e.steps) + (onestep is not None and 1 in e.steps) + len(stage_loras)
    out = {
        "n_samples": len(labels),
        "real_samples": len(held_out),
        "eta": e.eta,
        "teacher_cfg": w,
        "reference": f"teacher DDIM {e.reference_steps} steps, cfg {w:g}",
        "reader": "sklearn MLP (64 hidden) on 8x8-pooled pixels, fitted on the load_digits training split",
        "rows": {},
    }
    if layout != "digits":  # the committed default's metrics.json stay as they are
        out["data_layout"] = layout
        out["reader"] += f" in each form of the {layout!r} layout"
    t_start, done, ref = time.time(), 0, None

    def add(name: str, imgs, steps: int, nfe: int, t0: float, **extra) -> None:
        nonlocal done
        r = score_images(clf, imgs, labels, real, ref if ref is not None else imgs, reader=reader)
        out["rows"][name] = dict(r, steps=steps, nfe=nfe, seconds=round(time.time() - t0, 2), **extra)
        done += 1
        log(
            f"eval [{done}/{total}] {name:<24} calls {nfe:>3}  adherence {r['adherence']:.3f}  "
            f"Frechet->teacher {r['frechet_teacher']:.2f}  traj.err {r['trajectory_error']:.4f}  "
            f"({time.time() - t_start:.0f}s)"
        )

    with trainer.teacher(local=True) as teacher:

        def run_teacher(k: int, cfg: float):
            return generate(teacher, trainer.conditioner, prompts, noise, steps=k, cfg=cfg, eta=0.0, **kw)

        t0 = time.time()
        ref = run_teacher(e.reference_steps, w)
        add(
            teacher_row(e.reference_steps, w),
            ref,
            e.reference_steps,
            2 * e.reference_steps if w != 1 else e.reference_steps,
            t0,
            kind="teacher",
            cfg=w,
        )
        for k in ladder:
            t0 = time.time()
            add(teacher_row(k, w), run_teacher(k, w), k, 2 * k if w != 1 else k, t0, kind="teacher", cfg=w)
        for k in cfg1:
            t0 = time.time()
            add(teacher_row(k, 1.0), run_teacher(k, 1.0), k, k, t0, kind="teacher", cfg=1.0)

    def student(k: int, os: int | None = None):
        return generate(
            trainer.base_unet,
            trainer.conditioner,
            prompts,
            noise,
            steps=k,
            cfg=1.0,
            eta=e.eta,
            onestep_timestep=os,
            **kw,
        )

    with stage.sampling_context():
        for k in e.steps:
            t0 = time.time()
            add(f"student {k}", student(k), k, k, t0, kind="student")
            if k == 1 and onestep is not None:
                t0 = time.time()
                add(f"student 1 t={onestep}", student(1, onestep), 1, 1, t0, kind="student", onestep_timestep=onestep)
    # Each stage's own LoRA at its own step count (k segments -> k steps), as Hyper-SD ships N-step LoRAs.
    from .trainer import init_lora_from

    final = lora_tensors(trainer.base_unet)
    try:
        for i, s in stage_loras:
            init_lora_from(
                trainer.base_unet, str(trainer.out / "lora" / f"stage{i + 1}_{s.name}_k{s.segments}.safetensors")
            )
            t0 = time.time()
            add(
                f"stage k={s.segments} LoRA {s.segments}", student(s.segments), s.segments, s.segments, t0, kind="stage"
            )
    finally:
        load_lora_tensors(trainer.base_unet, final)
    out["rows"][teacher_row(e.reference_steps, w)].update(trajectory_error=0.0, frechet_teacher=0.0)  # itself
    add_comparisons(out, e.steps)
    return out


# -- equal-call comparison ----------------------------------------------------------------------------
# (metric, larger is better)
JUDGED = (("trajectory_error", False), ("frechet_teacher", False), ("adherence", True))


def teacher_at(calls: int, cfg: float) -> tuple[int, float] | None:
    """(steps, cfg) of the untrained teacher at ``calls`` model calls: 1 step cfg 1 at one call,
    calls/2 steps at the guided cfg otherwise (two calls a step); None for an odd count above 1."""
    return (1, 1.0) if calls == 1 else ((calls // 2, cfg) if calls % 2 == 0 else None)


def baseline_at(rows: dict, calls: int, cfg: float) -> str | None:
    """The teacher row at ``calls`` model calls (``teacher_at``), if the table has it."""
    at = teacher_at(calls, cfg)
    want = teacher_row(*at) if at else None
    return want if want in rows else None


def lora_wins(lora: dict, teacher: dict) -> dict[str, bool]:
    """Per judged measure, whether the LoRA row is better; ties on adherence (both read every
    digit right) count for the LoRA: it is not worse."""
    return {m: (lora[m] >= teacher[m]) if up else (lora[m] < teacher[m]) for m, up in JUDGED}


def steps_to_match(rows: dict, row: dict, cfg: float, metric: str = "trajectory_error") -> int | None:
    """Fewest teacher DDIM steps at ``cfg`` whose ``metric`` is at least as good as ``row``'s (None: none scored)."""
    ks = sorted(r["steps"] for n, r in rows.items() if r.get("kind") == "teacher" and r.get("cfg") == cfg)
    for k in ks:
        if rows[teacher_row(k, cfg)][metric] <= row[metric]:
            return k
    return None


def adherence_gap(lora: float, teacher: float, n: int) -> dict:
    """The adherence difference in digits of ``n`` and its two-sided Fisher exact p-value: whether
    a gap of a few digits is significant at this n (a gap that is not may still be real at a larger n)."""
    from scipy.stats import fisher_exact

    a, b = round(lora * n), round(teacher * n)
    p = 1.0 if a == b else float(fisher_exact([[a, n - a], [b, n - b]])[1])
    return {"lora_minus_teacher": a - b, "of": n, "p": round(p, 3)}


def add_comparisons(out: dict, steps) -> None:
    rows, w = out["rows"], out["teacher_cfg"]
    for r in rows.values():
        if r.get("kind") in ("student", "stage"):
            k = steps_to_match(rows, r, w)
            r["teacher_steps_to_match"] = k
            r["teacher_calls_to_match"] = None if k is None else (2 * k if w != 1 else k)
    comp = {}
    for c in steps:
        base = baseline_at(rows, c, w)
        if base is None:
            continue
        cands = [n for n, r in rows.items() if r.get("kind") in ("student", "stage") and r["nfe"] == c]
        for n in cands:
            wins = lora_wins(rows[n], rows[base])
            comp[f"{n} vs {base}"] = {
                "calls": c,
                "lora": n,
                "kind": rows[n]["kind"],
                "onestep_timestep": rows[n].get("onestep_timestep"),
                "teacher": base,
                "wins": wins,
                "lora_wins_all": all(wins.values()),
                "adherence_digits": adherence_gap(rows[n]["adherence"], rows[base]["adherence"], out["n_samples"]),
            }
    out["equal_calls"] = comp
    out["verdict"] = verdict_line(out)


def verdict_line(out: dict) -> str:
    """One line: at which call counts some LoRA beats the teacher on all three measures."""
    by_calls: dict[int, list] = {}
    for c in out.get("equal_calls", {}).values():
        by_calls.setdefault(c["calls"], []).append(c)
    if not by_calls:
        return "no teacher row at equal model calls"
    parts = []
    for calls in sorted(by_calls):
        # the best LoRA at these calls; on a tie the stage's own k-step LoRA (the one shipped for k steps),
        # then the final LoRA's one-step sampler ("student 1 t=800", what its header tells ComfyUI to run)
        best = max(
            by_calls[calls],
            key=lambda c: (sum(c["wins"].values()), c["kind"] == "stage", c["onestep_timestep"] is not None),
        )
        n = sum(best["wins"].values())
        who = "LoRA wins" if n == 3 else ("teacher wins" if n == 0 else f"mixed ({n}/3 to the LoRA)")
        gap = best.get("adherence_digits")
        if gap and not best["wins"]["adherence"]:
            noise = f"not significant at n={gap['of']}" if gap["p"] > 0.05 else "significant"
            who += f", adherence {gap['lora_minus_teacher']} of {gap['of']} digits (p={gap['p']:.2f}, {noise})"
        parts.append(f"{calls} call{'s' if calls > 1 else ''}: {who} ({best['lora']} vs {best['teacher']})")
    return "Verdict at equal model calls (traj. error, Frechet->teacher, adherence): " + "; ".join(parts)


def format_table(metrics: dict) -> str:
    head = (
        f"{'sampler':<24} {'calls':>5} {'adher.':>6} {'Fr->teach':>9} {'Fr->real':>8} {'traj.err':>8} "
        f"{'reward':>6} {'match':>5}"
    )
    lines = [head]
    for name, r in metrics["rows"].items():
        if "frechet_teacher" not in r:  # a metrics.json from before the reader
            lines.append(
                f"{name:<24} {r['nfe']:>5} {r['adherence']:>6.3f} {'-':>9} {r['frechet']:>8.3f} "
                f"{r.get('trajectory_error', 0):>8.4f}"
            )
            continue
        match = r.get("teacher_steps_to_match", "")
        match = "" if "teacher_steps_to_match" not in r else (">max" if match is None else str(match))
        lines.append(
            f"{name:<24} {r['nfe']:>5} {r['adherence']:>6.3f} {r['frechet_teacher']:>9.2f} {r['frechet']:>8.2f} "
            f"{r['trajectory_error']:>8.4f} {r['adherence_reward']:>6.3f} {match:>5}"
        )
    lines.append(
        f"(n={metrics['n_samples']} samples, same noise and prompts; adher. = the independent reader's accuracy "
        f"on the captioned digit; Fr->teach / Fr->real = Frechet distance in its features to the reference / "
        f"to {metrics['real_samples']} held-out digits; traj.err vs {metrics['reference']}; reward = the embedded "
        f"classifier (the feedback reward); match = teacher DDIM steps at cfg {metrics.get('teacher_cfg', 3):g} "
        f"reaching the row's traj.err)"
    )
    for c in metrics.get("equal_calls", {}).values():
        mark = {m: ("LoRA" if v else "teacher") for m, v in c["wins"].items()}
        lines.append(
            f"  {c['calls']} calls: {c['lora']} vs {c['teacher']}: traj.err {mark['trajectory_error']}, "
            f"Frechet->teacher {mark['frechet_teacher']}, adherence {mark['adherence']}"
        )
    if metrics.get("verdict"):
        lines.append(metrics["verdict"])
    return "\n".join(lines)


# -- recomputing a finished run's comparisons -----------------------------------------------------------
class MetricsFileError(UserError):
    """A run folder without a usable metrics.json."""


def compared_calls(metrics: dict) -> list[int]:
    """The call counts a run compared at: its eval.steps, the step counts of its ``student`` rows."""
    return sorted({r["nfe"] for r in metrics["rows"].values() if r.get("kind") == "student"})


def _read_metrics(path: Path) -> dict:
    run = path.parent
    redo = f"rerun the evaluation: python -m train --config {run / 'config.json'} --output {run} --resume"
    if not path.is_file():
        raise MetricsFileError(f"{path} not found: only runs with eval.enabled (embedded digits) write it; {redo}")
    try:
        metrics = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetricsFileError(f"{path} is not valid JSON ({e}); restore it from the run or {redo}") from None
    rows = metrics.get("rows") if isinstance(metrics, dict) else None
    keys = ("teacher_cfg", "n_samples", "real_samples", "reference")
    if (
        not isinstance(rows, dict)
        or not all(isinstance(r, dict) for r in rows.values())
        or not all(k in metrics for k in keys)
    ):
        raise MetricsFileError(
            f"{path} is not a metrics.json written by train.evaluate (an object with 'rows' and "
            f"{', '.join(repr(k) for k in keys)}); {redo}"
        )
    return metrics


def retable(run_dir: str | Path) -> dict:
    """Recompute ``equal_calls``, ``verdict`` and table.txt of ``run_dir`` from its metrics.json
    (rows unchanged). Each file is replaced atomically, one after the other: a kill between the two
    leaves a stale table.txt, which running this again mends. Returns the updated metrics."""
    from hypersd_core.lora_formats import atomic_write_text

    run = Path(run_dir)
    if not run.is_dir():
        raise MetricsFileError(f"{run} is not a folder: pass the output folder of a training run")
    path = run / "metrics.json"
    metrics = _read_metrics(path)
    try:
        add_comparisons(metrics, compared_calls(metrics))
        table = format_table(metrics)
    except (KeyError, TypeError, ValueError) as e:
        raise MetricsFileError(
            f"{path}: a row lacks what the comparison needs ({type(e).__name__}: {e}); it is from an older "
            "evaluation or was edited: rerun the evaluation"
        ) from None
    atomic_write_text(str(path), json.dumps(metrics, indent=2))
    atomic_write_text(str(run / "table.txt"), table + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Recompute a finished run's equal-call comparisons and verdict from its metrics.json.",
    )
    ap.add_argument(
        "--retable",
        metavar="RUN_DIR",
        required=True,
        help="run output folder: rewrites metrics.json (equal_calls, verdict) and table.txt, no sampling",
    )
    args = ap.parse_args(argv)
    try:
        metrics = retable(args.retable)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(metrics["verdict"])
    print(f"rewrote {Path(args.retable) / 'metrics.json'} and {Path(args.retable) / 'table.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
