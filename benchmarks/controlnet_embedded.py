"""Do Hyper-SD LoRAs keep a ControlNet's control? Measured on the embedded digits (CPU, seeded).

    python -m benchmarks.controlnet_embedded --lora "TSCD LoRA=RUN/hypersd_lora.safetensors" \
        --lora "unified LoRA=RUN2/hypersd_lora.safetensors"          # ~10 min on 2 shared cores
    python -m benchmarks.controlnet_embedded --quick --lora NAME=PATH  # CI: 1 digit per class, 1-2 steps
    (--lora "NAME@K=PATH" measures a LoRA at K steps only: a k-segment stage LoRA at its own k)

The embedded scribble ControlNet (train/embedded/controlnet, hypersd_models.controlnet) steers the
teacher UNet with and without a LoRA merged (hypersd_core's LoraMerge, as a user loads it; the
ControlNet is unchanged, as Hyper-SD's LoRAs are used with off-the-shelf ControlNets). Control
images: the scribbles (hypersd_models.controlnet.scribble) of ``--per-digit`` held-out digits of
every class, each prompted with its own digit's caption, control strength 1.

Rows: the teacher DDIM 25 steps cfg 3 (the reference; also without the ControlNet, to show what
the control adds), the untrained teacher at 1/2/4/8 DDIM steps at cfg 3 (2 model calls a step)
and at cfg 1 (1 call a step), and each LoRA at 1/2/4/8 steps (cfg 1: 1 call a step; eta and the
one-step timestep from its header). A model call is one UNet + one ControlNet evaluation.

Measures, none of which any training optimised:
- control agreement: intersection over union between the input scribble and the output's
  scribble, derived the same way (pixels above mid-grey); "kept" = a row's agreement over the
  teacher's at DDIM 25 (the issue's bar: >= 90 % for the LoRAs at 2 steps and above);
- prompt adherence: the independent digit reader (train.metrics.DigitReader, an sklearn MLP) reads
  the captioned digit;
- control vs prompt: the same scribbles prompted with another digit; how often the reader reads the
  scribble's digit (control wins) and the prompt's (a LoRA that weakened the control would let
  the prompt win more often).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, split_named, write_json, write_text

STEPS = (1, 2, 4, 8)
REF_STEPS, CFG = 25, 3.0
KEEP_BAR = 0.9


class Bench:
    """The teacher, the ControlNet, the eval set (scribbles, prompts, noise) and the reader."""

    def __init__(self, per_digit: int, seed: int, controlnet_path=None):
        from hypersd_models.controlnet import load_controlnet, scribble
        from hypersd_models.embedded import encode_prompts, load_embedded
        from train.digits import load_digit_splits, random_captions
        from train.metrics import digit_reader

        self.t = load_embedded()
        self.unet = self.t.unet
        self.controlnet = load_controlnet(controlnet_path, self.unet)
        _, test = load_digit_splits(self.t.resolution)
        idx = torch.cat([torch.nonzero(test.labels == d).flatten()[:per_digit] for d in range(10)])
        self.labels = test.labels[idx]
        self.control = scribble(test.images[idx])
        prompts = random_captions(self.labels, random.Random(seed))
        self.cond = encode_prompts(self.t.text_encoder, self.t.tokenizer, prompts)
        # the conflict set: the same scribbles, each prompted with another digit (1-9 away)
        g = torch.Generator().manual_seed(seed + 1)
        self.other = (self.labels + torch.randint(1, 10, self.labels.shape, generator=g)) % 10
        others = random_captions(self.other, random.Random(seed + 1))
        self.cond_other = encode_prompts(self.t.text_encoder, self.t.tokenizer, others)
        self.uncond = encode_prompts(self.t.text_encoder, self.t.tokenizer, [""]).expand_as(self.cond)
        self.noise = torch.randn(self.control.shape, generator=torch.Generator().manual_seed(seed))
        self.reader = digit_reader(self.t.resolution)
        self.seed = seed

    @torch.no_grad()
    def generate(self, steps: int, cfg: float, eta: float = 0.0, onestep=None, control: bool = True, other=False):
        from train.sampling import sample_images

        cond = self.cond_other if other else self.cond
        added = {"control_image": self.control, "control_scale": torch.ones(len(self.labels))} if control else None
        return sample_images(
            self.unet,
            self.noise,
            cond,
            self.uncond if cfg != 1 else None,
            steps=steps,
            cfg=cfg,
            eta=eta,
            seed=self.seed,
            onestep_timestep=onestep,
            controlnet=self.controlnet if control else None,
            added_cond=added,
            added_uncond=added,
        ).clamp(-1, 1)

    def score(self, images, conflict=None) -> dict:
        """Control IoU and adherence; with the conflict set's images, how often the reader reads
        the scribble's digit ("scribble wins") and the prompt's ("prompt wins")."""
        from hypersd_models.controlnet import scribble, stroke_iou

        iou = stroke_iou(scribble(images), self.control)
        out = {"control_iou": float(iou.mean()), "adherence": self.reader.adherence(images, self.labels)}
        if conflict is not None:
            out["conflict_scribble_wins"] = self.reader.adherence(conflict, self.labels)
            out["conflict_prompt_wins"] = self.reader.adherence(conflict, self.other)
            out["conflict_control_iou"] = float(stroke_iou(scribble(conflict), self.control).mean())
        return out


def lora_header(path: str) -> tuple[float, int | None]:
    """(eta, one-step timestep) the LoRA's header names (0.0 / None when absent)."""
    from hypersd_core.lora_formats import HyperSDMetadata, load_lora

    md = HyperSDMetadata.from_header(load_lora(path)[1])
    if md is None:
        return 0.0, None
    return float(md.eta or 0.0), md.onestep_timestep


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    steps = (1, 2) if args.quick else STEPS
    ref_steps = 4 if args.quick else REF_STEPS
    t_all = time.time()
    b = Bench(args.per_digit, args.seed, args.controlnet)
    rows: dict[str, dict] = {}

    def add(name: str, kind: str, k: int, calls: int, fn, **extra) -> None:
        t0 = time.perf_counter()
        imgs = fn()
        sec = time.perf_counter() - t0
        conflict = fn(other=True) if kind != "no-control" else None
        rows[name] = dict(b.score(imgs, conflict), kind=kind, steps=k, calls=calls, seconds=round(sec, 2), **extra)
        r = rows[name]
        print(
            f"{name:<34} calls {calls:>3}  control IoU {r['control_iou']:.3f}  adherence {r['adherence']:.3f}  "
            f"scribble wins {r.get('conflict_scribble_wins', float('nan')):.3f}  ({sec:.1f}s)",
            flush=True,
        )

    ref = f"teacher DDIM {ref_steps} cfg {CFG:g}"
    add(ref, "reference", ref_steps, 2 * ref_steps, lambda **o: b.generate(ref_steps, CFG, **o))
    add(
        f"{ref}, no ControlNet",
        "no-control",
        ref_steps,
        2 * ref_steps,
        lambda **o: b.generate(ref_steps, CFG, control=False, **o),
    )
    for k in steps:
        add(f"teacher DDIM {k} cfg {CFG:g}", "teacher", k, 2 * k, lambda **o: b.generate(k, CFG, **o), cfg=CFG)
        add(f"teacher DDIM {k} cfg 1", "teacher", k, k, lambda **o: b.generate(k, 1.0, **o), cfg=1.0)
    from hypersd_core.lora_formats import load_lora
    from hypersd_core.lora_merge import LoraMerge

    for spec in args.lora:
        name, path = spec.split("=", 1)
        name, _, only = name.partition("@")
        eta, onestep = lora_header(path)
        sd, meta = load_lora(path)
        merge = LoraMerge(b.unet, sd, 1.0, metadata=meta)
        try:
            for k in [int(only)] if only else steps:
                os1 = onestep if k == 1 else None
                label = f"{name} {k} step" + (f" t={os1}" if os1 else "")
                add(
                    label,
                    "lora",
                    k,
                    k,
                    lambda **o: b.generate(k, 1.0, eta, os1, **o),
                    lora=name,
                    eta=eta,
                    path=str(path),
                )
        finally:
            merge.remove()
    base = rows[ref]["control_iou"]
    for r in rows.values():
        r["control_kept"] = r["control_iou"] / base if base > 0 else float("nan")
    checks = {}
    for n, r in rows.items():
        if r["kind"] == "lora" and r["steps"] >= 2:
            checks[n] = {"control_kept": r["control_kept"], "meets_90pct": r["control_kept"] >= KEEP_BAR}
    equal = {}
    for n, r in rows.items():
        if r["kind"] != "lora":
            continue
        c = r["calls"]
        cands = [f"teacher DDIM {c} cfg 1"] + ([f"teacher DDIM {c // 2} cfg {CFG:g}"] if c % 2 == 0 else [])
        equal[n] = {
            t: {
                "control_iou": rows[t]["control_iou"],
                "adherence": rows[t]["adherence"],
                "lora_better_control": r["control_iou"] >= rows[t]["control_iou"],
                "lora_better_adherence": r["adherence"] >= rows[t]["adherence"],
            }
            for t in cands
            if t in rows
        }
    info = machine_info()
    info["load_average"] = os.getloadavg()
    return {
        "command": "python -m benchmarks.controlnet_embedded " + " ".join(args.argv),
        "machine": info,
        "n_samples": len(b.labels),
        "control": "scribble of held-out digits (pixels above mid-grey), strength 1",
        "conflict": "the same scribbles, each prompted with another digit (1-9 away, seeded)",
        "controlnet": str(args.controlnet or "train/embedded/controlnet"),
        "reference": ref,
        "reader": "sklearn MLP (64 hidden) on 8x8-pooled pixels, fitted on the load_digits training split",
        "rows": rows,
        "lora_control_kept_2plus_steps": checks,
        "all_loras_meet_90pct_at_2plus_steps": all(c["meets_90pct"] for c in checks.values()) if checks else None,
        "equal_calls": equal,
        "seconds": round(time.time() - t_all, 1),
    }


def markdown(res: dict) -> str:
    table = markdown_table(
        [
            "sampler",
            "model calls",
            "control IoU",
            "kept vs DDIM 25",
            "adherence",
            "conflict: scribble / prompt wins",
            "seconds",
        ],
        [
            [
                n,
                r["calls"],
                round(r["control_iou"], 3),
                f"{100 * r['control_kept']:.0f} %",
                r["adherence"],
                f"{r['conflict_scribble_wins']:.2f} / {r['conflict_prompt_wins']:.2f}"
                if "conflict_scribble_wins" in r
                else "-",
                r["seconds"],
            ]
            for n, r in res["rows"].items()
        ],
    )
    lines = [
        f"ControlNet compatibility on the embedded digits ({res['n_samples']} held-out scribbles, same noise "
        f"and prompts for every row; {describe(res['machine'])}; load average "
        f"{', '.join(f'{x:.2f}' for x in res['machine']['load_average'])})",
        "",
        table,
        "control IoU: input scribble vs the output's scribble (derived the same way); adherence: the independent "
        "reader's accuracy on the captioned digit; conflict: the same scribbles prompted with another digit, how "
        "often the reader reads the scribble's digit / the prompt's. A model call = UNet + ControlNet; seconds: "
        "the main set only.",
        "",
    ]
    for n, c in res["lora_control_kept_2plus_steps"].items():
        ok = "meets" if c["meets_90pct"] else "MISSES"
        lines.append(f"- {n}: keeps {100 * c['control_kept']:.0f} % of the teacher's control agreement ({ok} 90 %)")
    for n, cmp in res["equal_calls"].items():
        for t, c in cmp.items():
            lines.append(
                f"- equal calls: {n} vs {t}: control {'LoRA' if c['lora_better_control'] else 'teacher'}, "
                f"adherence {'LoRA' if c['lora_better_adherence'] else 'teacher'}"
            )
    lines += ["", f"Command: `{res['command']}` ({res['seconds']} s)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME[@K]=PATH",
        help="a LoRA to measure at 1/2/4/8 steps, or at K steps only with @K (repeatable)",
    )
    ap.add_argument("--controlnet", default=None, help="a ControlNet folder (default: the embedded one)")
    ap.add_argument("--per-digit", type=int, default=10, help="held-out scribbles per digit class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1-2 steps, a 4-step reference (CI)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "controlnet_embedded.json"))
    args = ap.parse_args(argv)
    args.argv = argv
    for spec in args.lora:
        name, path = split_named(spec)
        only = name.partition("@")[2]
        if not name or not path or (only and not only.isdigit()):
            ap.error(f"--lora takes NAME=PATH or NAME@K=PATH, got {spec!r}")
        if not Path(path).exists():
            ap.error(f"--lora {name}: {path} not found")
    if args.per_digit < 1:
        ap.error("--per-digit must be >= 1")
    res = run(args)
    out = Path(args.out)
    write_json(out, res)
    write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
