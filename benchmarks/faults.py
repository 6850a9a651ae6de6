"""Faults during training: SIGKILLs at random moments (one inside a checkpoint write) and a disk that
fills up during a checkpoint write. After each, ``--resume`` must end on the uninterrupted run's
LoRA bit for bit, with no half-written file left behind.

    python -m benchmarks.faults                 # embedded model, 5 kills + disk full
    python -m benchmarks.faults --tiny          # tiny random model (CI)

Writes benchmarks/results/faults.{json,md} (``--out`` elsewhere). The disk-full part mounts a small
tmpfs, so it needs root; without it that part is reported as not run, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _train_args(tiny: bool, out: Path, tokenizer: str | None) -> list[str]:
    if tiny:
        args = ["--preset", "tiny-test", "--set", "stage_all.steps=6", "--set", "checkpoint_every=2"]
        args += ["--set", f"model.tokenizer_path={tokenizer or REPO / 'train' / 'embedded' / 'tokenizer'}"]
    else:
        args = [
            "--preset",
            "embedded",
            "--set",
            "stage_all.steps=8",
            "--set",
            "checkpoint_every=3",
            "--set",
            "sample.num=4",
            "--set",
            "sample.teacher_steps=4",
        ]
    return [
        sys.executable,
        "-m",
        "train",
        *args,
        "--set",
        "eval.enabled=false",
        "--set",
        "threads=1",
        "--set",
        "keep_checkpoints=2",
        "--output",
        str(out),
    ]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return env


def _lora(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "hypersd_lora.safetensors"))


def _same(a: dict, b: dict) -> tuple[bool, float]:
    import torch

    if a.keys() != b.keys():
        return False, float("inf")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return all(torch.equal(a[k], b[k]) for k in a), diff


def _partials(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".tmp-*"))


def reference(tiny: bool, work: Path, tokenizer: str | None) -> tuple[dict, float]:
    out = work / "reference"
    t0 = time.time()
    res = subprocess.run(_train_args(tiny, out, tokenizer), cwd=REPO, env=_env(), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{res.stderr[-3000:]}")
    return _lora(out), time.time() - t0


def kills(tiny: bool, work: Path, tokenizer: str | None, ref: dict, ref_seconds: float, n: int, seed: int) -> dict:
    """``n`` SIGKILLs: the first as soon as a checkpoint write starts, the rest at random moments."""
    rng = random.Random(seed)
    out = work / "killed"
    log, first = [], True
    while len(log) < n:
        cmd = _train_args(tiny, out, tokenizer) + ([] if first else ["--resume"])
        first = False
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        inside = False
        if not log:  # kill inside a checkpoint write: poll for the temp folder
            root = out / "checkpoints"
            while proc.poll() is None:
                if root.is_dir() and any(p.name.startswith(".tmp-step-") for p in root.iterdir()):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.001)
            proc.wait()
            inside = root.is_dir() and any(p.name.startswith(".tmp-step-") for p in root.iterdir())
        else:
            delay = rng.uniform(0.2, 0.9) * ref_seconds
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
        if proc.returncode == 0:  # finished before the kill: start over so every kill lands
            shutil.rmtree(out)
            log.clear()
            first = True
            continue
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"killed run failed by itself (exit {proc.returncode}):\n{err[-3000:]}")
        ckpts = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
        log.append(
            {
                "after_s": round(time.time() - t0, 2),
                "inside_checkpoint_write": inside,
                "partial_files_left": _partials(out),
                "checkpoints": ckpts,
            }
        )
    t0 = time.time()
    res = subprocess.run(
        _train_args(tiny, out, tokenizer) + ["--resume"], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"final resume failed:\n{res.stderr[-3000:]}")
    equal, diff = _same(_lora(out), ref)
    return {
        "kills": log,
        "final_resume_s": round(time.time() - t0, 1),
        "lora_bit_identical": equal,
        "max_abs_diff": diff,
        "partial_files_after_resume": _partials(out),
        "any_kill_inside_checkpoint_write": any(k["inside_checkpoint_write"] for k in log),
    }


def _mount(path: Path, mb: float) -> str | None:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={int(mb * 1024)}k", "tmpfs", str(path)], capture_output=True, text=True
    )
    return None if res.returncode == 0 else (res.stderr.strip() or "mount failed")


def disk_full(tiny: bool, work: Path, tokenizer: str | None, ref: dict) -> dict:
    """Output on a tmpfs that fills during a checkpoint write; then more space and --resume."""
    from train.checkpoint import verify_checkpoint

    ckpt = max((p for p in (work / "reference" / "checkpoints").iterdir()), key=lambda p: p.stat().st_mtime)
    ckpt_mb = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20
    mnt = work / "tmpfs"
    size_mb = 1.6 * ckpt_mb + 0.5  # room for one checkpoint and the logs, not for the second
    why = _mount(mnt, size_mb)
    if why is not None:
        return {"run": False, "reason": f"cannot mount a tmpfs ({why}); needs root"}
    try:
        out = mnt / "run"
        res = subprocess.run(_train_args(tiny, out, tokenizer), cwd=REPO, env=_env(), capture_output=True, text=True)
        err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        committed = (
            sorted(p for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
            if (out / "checkpoints").is_dir()
            else []
        )
        damaged = {p.name: verify_checkpoint(p) for p in committed if verify_checkpoint(p)}
        subprocess.run(["mount", "-o", "remount,size=512m", str(mnt)], check=True)
        again = subprocess.run(
            _train_args(tiny, out, tokenizer) + ["--resume"], cwd=REPO, env=_env(), capture_output=True, text=True
        )
        equal, diff = _same(_lora(out), ref) if again.returncode == 0 else (False, float("nan"))
        return {
            "run": True,
            "tmpfs_mb": round(size_mb, 2),
            "checkpoint_mb": round(ckpt_mb, 2),
            "exit_code": res.returncode,
            "stderr_lines": err_lines[-3:],
            "one_line": len(err_lines) == 1,
            "traceback": "Traceback" in res.stderr,
            "committed_checkpoints": [p.name for p in committed],
            "damaged_committed": damaged,
            "resume_exit_code": again.returncode,
            "lora_bit_identical": equal,
            "max_abs_diff": diff,
            "partial_files_after_resume": _partials(out),
        }
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def markdown(r: dict) -> str:
    k, d = r["kills"], r["disk_full"]
    lines = [
        f"# Faults during training ({r['model']} model)",
        "",
        f"`{r['command']}`; {r['when']}; load average before {r['load_before']}, after {r['load_after']}.",
        f"Uninterrupted reference run: {r['reference_s']:.1f} s.",
        "",
        "## SIGKILLs",
        "",
        "| kill | after (s) | inside a checkpoint write | half-written files at that moment |",
        "|---|---|---|---|",
    ]
    for i, e in enumerate(k["kills"], 1):
        lines.append(
            f"| {i} | {e['after_s']} | {'yes' if e['inside_checkpoint_write'] else 'no'} | "
            f"{', '.join(e['partial_files_left']) or 'none'} |"
        )
    lines += [
        "",
        f"Final `--resume`: LoRA bit-identical to the uninterrupted run: **{k['lora_bit_identical']}** "
        f"(max abs diff {k['max_abs_diff']:g}); half-written files left: "
        f"{', '.join(k['partial_files_after_resume']) or 'none'}.",
        "",
        "## Disk full",
        "",
    ]
    if not d.get("run"):
        lines.append(f"Not run: {d.get('reason')}.")
    else:
        lines += [
            f"Output on a {d['tmpfs_mb']} MB tmpfs (one checkpoint is {d['checkpoint_mb']} MB): exit code "
            f"{d['exit_code']}, one line: {d['one_line']}, traceback: {d['traceback']}.",
            "",
            "```",
            *d["stderr_lines"],
            "```",
            "",
            f"Committed checkpoints {', '.join(d['committed_checkpoints']) or 'none'}, damaged: "
            f"{d['damaged_committed'] or 'none'}. After remounting larger, `--resume` exit {d['resume_exit_code']}, "
            f"LoRA bit-identical: **{d['lora_bit_identical']}**, half-written files left: "
            f"{', '.join(d['partial_files_after_resume']) or 'none'}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random model (seconds; CI)")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", help="CLIP tokenizer folder for --tiny (default: the repo's embedded one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults"))
    args = ap.parse_args(argv)
    from hypersd_core.lora_formats import atomic_write_text

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ref, ref_s = reference(args.tiny, work, args.tokenizer)
        k = kills(args.tiny, work, args.tokenizer, ref, ref_s, args.kills, args.seed)
        d = disk_full(args.tiny, work, args.tokenizer, ref)
    res = {
        "model": "tiny" if args.tiny else "embedded",
        "command": "python -m benchmarks.faults" + (" --tiny" if args.tiny else ""),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "reference_s": ref_s,
        "kills": k,
        "disk_full": d,
    }
    out = Path(args.out)
    atomic_write_text(str(out.with_suffix(".json")), json.dumps(res, indent=1, default=str))
    atomic_write_text(str(out.with_suffix(".md")), markdown(res))
    print(markdown(res))
    ok = k["lora_bit_identical"] and not k["partial_files_after_resume"] and k["any_kill_inside_checkpoint_write"]
    if d.get("run"):
        ok = ok and d["exit_code"] == 2 and d["one_line"] and not d["damaged_committed"] and d["lora_bit_identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
