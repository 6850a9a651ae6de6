"""Every GPU figure in one call: the GPU benchmarks in priority order within a time budget.

    python -m benchmarks.gpu_all                  # GPU: default budget 540 s (9 min) including compile times
    python -m benchmarks.gpu_all --budget 300 --only speed_inference,realtime_gpu
    python -m benchmarks.gpu_all --tiny           # CPU code-path check (CI); the numbers mean nothing

Each benchmark runs as its own process (a crash or a hang costs that one task, not the rest) with
a timeout of what is left of the budget (capped per task), writes its JSON + markdown as soon as it
finishes, and ``gpu_all.json`` (status, seconds, device of every task) is rewritten after each task.
Tasks left when the budget is spent are recorded as not run. At the end the tables between the
``<!-- gpu_all:begin -->`` / ``<!-- gpu_all:end -->`` markers of benchmarks/RESULTS.md and README.md
are rewritten from the result files (``--tiny`` writes the docs only when given --results-md /
--readme: toy numbers do not belong in them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .report import RESULTS_DIR, write_json, write_text

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu_all:begin -->", "<!-- gpu_all:end -->"
MIN_START_S = 20  # do not start a task with less than this left


@dataclass(frozen=True)
class Task:
    name: str
    module: str
    gpu_args: tuple[str, ...]
    tiny_args: tuple[str, ...]
    cap_s: int  # the most this task may take on a GPU (compile included)
    what: str
    needs_comfyui: bool = False


# Priority order: the figures the README quotes first.
TASKS = (
    Task(
        "speed_inference",
        "benchmarks.speed_gpu",
        ("--sections", "inference"),
        ("--tiny", "--sections", "inference", "--models", "sd15-tiny", "--steps", "1,2"),
        150,
        "SD1.5/SDXL 1-8 step latency: hypersd_core sampler vs diffusers + TCDScheduler",
    ),
    Task(
        "realtime_gpu",
        "benchmarks.realtime_gpu",
        (),
        ("--tiny", "--no-compile", "--models", "sd15"),
        180,
        "real-time generation latency, eager vs compiled (CUDA graphs)",
    ),
    Task(
        "controlnet_gpu",
        "benchmarks.controlnet_gpu",
        (),
        ("--tiny", "--no-compile"),
        150,
        "ms per image with a ControlNet (SD1.5 + SD1.5 ControlNet, 1/2/4 steps, eager vs compiled)",
    ),
    Task(
        "speed_training",
        "benchmarks.speed_gpu",
        ("--sections", "training"),
        ("--tiny", "--sections", "training", "--models", "sd15-tiny"),
        150,
        "TSCD vs LCM-LoRA training step: samples/s and peak memory",
    ),
    Task(
        "memory_sdxl_dmd",
        "benchmarks.memory_sdxl_dmd",
        ("--cuda", "--stages", "dmd,unified", "--ranks", "64", "--gc", "on"),
        ("--tiny", "--stages", "dmd", "--ranks", "8", "--gc", "on"),
        120,
        "SDXL DMD / unified stage peak memory (checks the fake-tensor count)",
    ),
    Task(
        "realtime_comfyui",
        "benchmarks.realtime_comfyui",
        (),
        ("--tiny",),
        120,
        "the real-time node inside ComfyUI vs TorchCompileModel",
        needs_comfyui=True,
    ),
    Task(
        "speed_compile",
        "benchmarks.speed_gpu",
        ("--sections", "compile"),
        ("--tiny", "--sections", "compile", "--models", "sd15-tiny"),
        150,
        "torch.compile of the sampling loop: graph breaks, reduce-overhead latency, sync-debug run",
    ),
    Task(
        "speed_scaling",
        "benchmarks.speed_gpu",
        ("--sections", "scaling"),
        ("--tiny", "--sections", "scaling", "--models", "sd15-tiny"),
        150,
        "TSCD step samples/s and peak memory over batch x resolution",
    ),
)


def device_name(tiny: bool) -> str:
    import torch

    if torch.cuda.is_available() and not tiny:
        return torch.cuda.get_device_name()
    from .machine import cpu_model

    return f"CPU ({cpu_model()})"


def run_task(task: Task, out_dir: Path, tiny: bool, timeout: float) -> dict:
    out = out_dir / f"{task.name}.json"
    cmd = [sys.executable, "-m", task.module, *(task.tiny_args if tiny else task.gpu_args), "--out", str(out)]
    row = {"task": task.name, "what": task.what, "command": " ".join(["python", *cmd[1:]]), "result": str(out)}
    if task.needs_comfyui and not (Path(os.environ.get("COMFYUI_PATH", "")) / "nodes.py").is_file():
        return {
            **row,
            "status": "skipped",
            "detail": "COMFYUI_PATH is not set to a ComfyUI tree with this pack linked in",
        }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            **row,
            "status": "timed out",
            "seconds": round(time.perf_counter() - t0, 1),
            "detail": f"stopped after {timeout:.0f} s (the budget left or the task's cap)",
        }
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if res.returncode != 0 or not out.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**row, "status": "failed", "detail": f"exit {res.returncode}: {tail[0][:300]}"}
    return {**row, "status": "ok"}


def render(manifest: dict) -> str:
    """The markdown that goes between the markers: a status table, then each finished task's table."""
    lines = [
        f"`python -m benchmarks.gpu_all{' --tiny' if manifest['tiny'] else ''} --budget {manifest['budget_s']}` "
        f"on {manifest['device']}, {manifest['date']} (commit {manifest['commit']}); "
        f"{manifest['seconds']} s of the budget used.",
        "",
    ]
    if manifest["tiny"]:
        lines += ["TINY MODE: tiny models on the CPU; the numbers verify the code paths and mean nothing.", ""]
    lines += ["| task | status | seconds | what |", "|---|---|---|---|"]
    for r in manifest["tasks"]:
        status = r["status"] + (f" ({r['detail']})" if r.get("detail") and r["status"] != "ok" else "")
        lines.append(f"| {r['task']} | {status} | {r.get('seconds', '-')} | {r['what']} |")
    for r in manifest["tasks"]:
        md = Path(r["result"]).with_suffix(".md")
        if r["status"] == "ok" and md.is_file():
            lines += ["", f"**{r['task']}** (`{Path(r['result']).name}`)", "", md.read_text().strip()]
    return "\n".join(lines) + "\n"


def replace_between_markers(path: Path, body: str) -> bool:
    """Rewrite the text between the gpu_all markers of ``path``; False (file untouched) if it has none."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_text(path, f"{head}{BEGIN}\n{body}{END}{tail}")
    return True


def readme_summary(manifest: dict) -> str:
    done = [r["task"] for r in manifest["tasks"] if r["status"] == "ok"]
    missing = [f"{r['task']} ({r['status']})" for r in manifest["tasks"] if r["status"] != "ok"]
    return (
        f"Measured on {manifest['device']} with `python -m benchmarks.gpu_all` ({manifest['date']}): "
        f"{', '.join(done) or 'nothing'} finished; {', '.join(missing) or 'none'} missing. Tables: "
        "`benchmarks/RESULTS.md` §3a.\n"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_all", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=540, help="seconds for everything, compile times included")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny models: checks the code paths only")
    ap.add_argument("--only", default=None, help="comma list of task names (default: all, in priority order)")
    ap.add_argument("--out-dir", default=None, help="result folder (default benchmarks/results/gpu_all[_tiny])")
    ap.add_argument(
        "--results-md",
        default=None,
        help="markdown file with gpu_all markers to update (default benchmarks/RESULTS.md; --tiny: none)",
    )
    ap.add_argument("--readme", default=None, help="README with gpu_all markers (default README.md; --tiny: none)")
    args = ap.parse_args(argv)
    names = [t.name for t in TASKS]
    wanted = args.only.split(",") if args.only else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(names)}", file=sys.stderr)
        return 2
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU here: the figures need one; `--tiny` checks the code paths on the CPU", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR / ("gpu_all_tiny" if args.tiny else "gpu_all")
    out_dir.mkdir(parents=True, exist_ok=True)
    from .machine import machine_info

    info = machine_info()
    manifest = {
        "tiny": args.tiny,
        "budget_s": args.budget,
        "device": device_name(args.tiny),
        "machine": info,
        "date": str(info.get("date_utc", ""))[:10],
        "commit": str(info.get("git_commit", "unknown"))[:12],
        "seconds": 0.0,
        "tasks": [],
    }
    t_start = time.perf_counter()
    for task in (t for t in TASKS if t.name in wanted):
        left = args.budget - (time.perf_counter() - t_start)
        if left < MIN_START_S:
            row = {
                "task": task.name,
                "what": task.what,
                "result": str(out_dir / f"{task.name}.json"),
                "status": "not run",
                "detail": f"budget spent ({left:.0f} s left)",
            }
        else:
            row = run_task(task, out_dir, args.tiny, timeout=left if args.tiny else min(left, task.cap_s))
        manifest["tasks"].append(row)
        manifest["seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out_dir / "gpu_all.json", manifest)  # saved after every task: a later hang loses nothing
        print(f"{task.name}: {row['status']} {row.get('seconds', '')} {row.get('detail', '')}".rstrip(), flush=True)
    body = render(manifest)
    write_text(out_dir / "gpu_all.md", body)
    results_md = args.results_md or (None if args.tiny else str(REPO / "benchmarks" / "RESULTS.md"))
    readme = args.readme or (None if args.tiny else str(REPO / "README.md"))
    for path, text in ((results_md, body), (readme, readme_summary(manifest))):
        if path and not replace_between_markers(Path(path), text):
            print(f"note: {path} has no {BEGIN} / {END} markers; left unchanged", file=sys.stderr)
    print(body)
    return 0 if all(r["status"] in ("ok", "skipped") for r in manifest["tasks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
