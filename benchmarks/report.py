"""Writing results: JSON and text (atomic, via hypersd_core's atomic_write_text) and markdown tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from hypersd_core.lora_formats import atomic_write_text
from train.evaluate import JUDGED as _DIRECTED

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def split_named(spec: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a benchmark option, split at the last ``=``: names may hold one (``k=4 LoRA``),
    paths rarely do. ``("", spec)`` when there is no ``=``."""
    name, _, value = spec.rpartition("=")
    return name, value


def write_json(path: str | Path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    atomic_write_text(path, text)  # makes the folder, never leaves a half file
    return Path(path)


def write_results(path: str | Path, data: dict, markdown: str) -> None:
    """``data`` as JSON at ``path`` and ``markdown`` beside it (.md), then the markdown printed."""
    write_json(path, data)
    write_text(Path(path).with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {path}")


def fmt(v, digits: int = 3) -> str:
    """Numbers for tables: ``-`` for missing, fixed significant digits otherwise."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


# The independent reader's measures (their directions live in train.evaluate.JUDGED), by name: the
# column and key order of every committed result.
JUDGED = tuple(sorted(m for m, _ in _DIRECTED))


def judged_rows(scores: dict, key: str, name: str, width: int) -> list[dict]:
    """Rows ``{key: name, "steps": k, adherence, frechet_teacher, trajectory_error}`` (4 places) from
    ``quality_embedded.Evaluator.rows`` output (``{k: [scores per eval seed]}``, first seed), each
    printed as one progress line with ``name`` left-aligned in ``width`` columns."""
    rows = []
    for k, per_seed in scores.items():
        r = {m: round(float(per_seed[0][m]), 4) for m in JUDGED}
        rows.append({key: name, "steps": k, **r})
        print(
            f"{name:<{width}} {k} steps: adherence {r['adherence']:.3f}  Frechet->teacher {r['frechet_teacher']:.2f}  "
            f"traj.err {r['trajectory_error']:.4f}",
            flush=True,
        )
    return rows


def judged_table(rows: Sequence[dict], name: tuple[str, str], count: tuple[str, str], frechet_digits: int = 2) -> str:
    """Markdown of judged rows: ``name`` and ``count`` are (header, row key) of the first two columns
    (e.g. the recipe and its steps), then adherence, Fréchet -> teacher and trajectory error."""
    return markdown_table(
        [name[0], count[0], "adherence ↑", "Fréchet → teacher ↓", "traj. error ↓"],
        [
            [
                r[name[1]],
                r[count[1]],
                f"{r['adherence']:.3f}",
                f"{r['frechet_teacher']:.{frechet_digits}f}",
                f"{r['trajectory_error']:.4f}",
            ]
            for r in rows
        ],
    )


SAMPLER_SHARE_HEADER = [
    "model",
    "steps",
    "sampler µs/step",
    "sampler+wrapper µs/step",
    "UNet ms/call",
    "sampler share",
    "sampler+wrapper share",
]


def sampler_share_table(rows: Sequence[dict]) -> str:
    """The sampler-overhead rows of an inference benchmark (zero-cost model vs one UNet call)."""
    return markdown_table(
        SAMPLER_SHARE_HEADER,
        [
            [
                r["model"],
                r["steps"],
                1e6 * r["sampler_seconds_per_step"],
                1e6 * r["sampler_plus_wrapper_seconds_per_step"],
                1e3 * r["unet_call_seconds_isolated"],
                f"{100 * r['sampler_share_of_step']:.3f}%",
                f"{100 * r['sampler_plus_wrapper_share_of_step']:.3f}%",
            ]
            for r in rows
        ],
    )
