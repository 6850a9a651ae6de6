"""The paper's quality table in miniature, on the embedded digits default (CPU, seeded).

    python -m benchmarks.quality_embedded            # full run (~20 min on 2 CPU cores)
    python -m benchmarks.quality_embedded --quick    # seconds: tiny budget, checks the script end to end

Methods, each distilled with the project's trainer (``train.trainer.Trainer``, the same code as
``python -m train``) from the embedded preset, and evaluated from the exported LoRA file merged
into the teacher with hypersd_core's LoraMerge (what a ComfyUI user loads):
- teacher: DDIM 25 and 50 steps, cfg 3 (the preset's teacher guidance), and the untrained
  teacher at the students' numbers of model calls (DDIM with cfg > 1 costs two calls a step):
  1 step cfg 1 (1 call), 1 / 2 / 4 steps cfg 3 (2 / 4 / 8 calls), and 1 / 2 / 4 / 8 steps cfg 1;
- single-stage CD (LCM-style): the same trainer with ONE segment (k = 1) for the same total
  number of optimizer steps and batch size as the TSCD stages together, pure consistency loss;
- TSCD: the embedded preset's progressive stages 8 -> 4 -> 2 -> 1 (MSE, adversarial term in the
  last two stages), and TSCD without the adversarial term (a pure-consistency ablation with the
  same losses as the single-stage baseline); "TSCD per-step LoRAs" are the same run's stage LoRAs,
  each at its own step count (k=8 at 8 steps ... k=1 at 1 step), as Hyper-SD ships 1/2/4/8-step LoRAs;
- TSCD 2-1: the project page's two stages (k=2 then k=1) at the same total budget (and its per-step LoRAs);
- TSCD + feedback: a feedback stage (TSCD k=1 + the digit-classifier ReFL reward) from the TSCD LoRA;
- unified LoRA: the unified stage (the embedded-unified preset's DMD + regression options at its
  one-step timestep, + TSCD loss) from the TSCD + feedback LoRA.
Students sample with cfg 1 at 1/2/4/8 steps (trailing timesteps, eta from the LoRA's metadata;
1 step of a LoRA whose header has a one-step timestep: the one-step sampler at that timestep).
Metrics (train/metrics.py), judged by the independent reader (an sklearn MLP fitted on the training
digits, never a loss or reward of the trainer): prompt adherence, Fréchet distance in its features to
held-out real digits and to the teacher's 50-step samples (fidelity), trajectory error (RMS distance
to the teacher's 50-step DDIM result from the same noise and prompt); the embedded classifier (the
feedback reward) is reported as "reward adherence" only.
Spread: a training seed's value is the mean over ``--eval-seeds`` evaluation seeds (different noise
and captions); "±" is the half-width of the 95% confidence interval (Student t) over training seeds
(over evaluation seeds when there is one training seed).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, write_json, write_text

STEPS = (1, 2, 4, 8)
BASELINE = "single-stage CD (k=1)"
TSCD = "TSCD 8-4-2-1"
TSCD_MSE = "TSCD 8-4-2-1 (no adv.)"
TSCD_PER_STEP = "TSCD per-step LoRAs"
TSCD21 = "TSCD 2-1"
TSCD21_PER_STEP = "TSCD 2-1 per-step LoRAs"
TSCD_MSE_PER_STEP = "TSCD 8-4-2-1 (no adv.) per-step LoRAs"
# method -> the rows of its stage LoRAs, each at its own step count
PER_STEP = {TSCD: TSCD_PER_STEP, TSCD_MSE: TSCD_MSE_PER_STEP, TSCD21: TSCD21_PER_STEP}
TEACHER, TEACHER_CFG1 = "teacher DDIM", "teacher DDIM cfg 1"
METRICS = ("frechet", "frechet_teacher", "adherence", "adherence_reward", "trajectory_error", "seconds")
FEEDBACK = "TSCD + feedback"
UNIFIED = "unified LoRA"


# -- training configs ------------------------------------------------------------------------------
def base_config(model: str, quick: bool, path: str | None = None) -> dict:
    """The embedded preset (or the tiny test model; ``path``: another embedded teacher, a packaged
    name such as "polarity" or a folder), as a dict to build the runs from."""
    from train.config import CONFIG_DIR, read_config_file

    data = read_config_file(CONFIG_DIR / "embedded.yaml")
    data = copy.deepcopy(data)
    data["eval"] = {"enabled": False}
    data["sample"] = dict(data.get("sample", {}), every=0, num=4)
    data["progress"] = False
    data["checkpoint_every"] = 0
    if model == "tiny":
        data["model"] = {"kind": "tiny"}
    elif path is not None:
        data["model"] = dict(data.get("model", {}), path=path)
    if quick:
        data["data"] = dict(data.get("data", {}), batch_size=4)
        data["lora"] = dict(data.get("lora", {}), rank=4)
        data["sample"] = dict(data["sample"], num=1, teacher_steps=1, steps=[1])
    return data


def tscd_stages(data: dict, quick: bool, adversarial: bool = True, steps: int | list[int] | None = None) -> list[dict]:
    """The preset's TSCD stages; ``steps`` (one count for every stage, or one per stage) overrides
    the preset's counts."""
    stages = [dict(s) for s in data["stages"]]
    if isinstance(steps, list) and len(steps) != len(stages):
        raise ValueError(f"--stage-steps needs {len(stages)} counts, one per TSCD stage (k=8,4,2,1), got {len(steps)}")
    for i, s in enumerate(stages):
        if quick:
            s["steps"] = 2
        elif steps:
            s["steps"] = steps[i] if isinstance(steps, list) else steps
        if not adversarial:
            s["adv_weight"] = 0.0
            s["consistency_weight"] = 1.0
    return stages


def two_stage(tscd: list[dict]) -> list[dict]:
    """The preset's k=2 and k=1 stages, splitting the 8-4-2-1 budget in two."""
    total = sum(int(s["steps"]) for s in tscd)
    two = [dict(s) for s in tscd if int(s["segments"]) in (2, 1)]
    two[0]["steps"], two[1]["steps"] = total // 2, total - total // 2
    return two


def baseline_stage(tscd: list[dict]) -> dict:
    """One segment, the TSCD stages' total steps, pure consistency (the LCM-style baseline)."""
    first = dict(tscd[0])
    first.update(segments=1, steps=sum(int(s["steps"]) for s in tscd), adv_weight=0.0, consistency_weight=1.0)
    return first


def feedback_stage(tscd: list[dict], quick: bool) -> dict:
    last = dict(tscd[-1])
    last.update(
        name="feedback",
        steps=int(last["steps"]),
        options={
            "feedback": {
                "rewards": [{"name": "digits"}],
                "weight": 0.05,
                "threshold": -0.05,
                "steps": [1, 2, 4, 8],
                "eta": 0.0,
                "every": 1,
                "batch_size": 8,
            }
        },
    )
    return last


def unified_stage(tscd: list[dict], quick: bool) -> dict:
    last = dict(tscd[-1])
    dmd = dict(preset_dmd_options())  # the embedded-unified preset's recipe, without its ReFL term
    if quick:
        dmd.update(reg_steps=2, reg_pairs=4)
    last.update(name="unified", steps=int(last["steps"]), adv_weight=0.0, consistency_weight=1.0, options={"dmd": dmd})
    return last


def preset_dmd_options() -> dict:
    """``options.dmd`` of the unified stage in train/configs/embedded-unified.yaml."""
    import yaml

    from train.config import CONFIG_DIR

    stages = yaml.safe_load((CONFIG_DIR / "embedded-unified.yaml").read_text())["stages"]
    return next(s for s in stages if s["name"] == "unified")["options"]["dmd"]


def train_run(
    data: dict, stages: list[dict], out: Path, seed: int, init_from: str | None = None, export_eta: float = 0.0
) -> dict:
    """One trainer run; returns its summary (exported LoRA paths, stage seconds)."""
    from train.config import load_config
    from train.trainer import Trainer

    d = copy.deepcopy(data)
    d.update(stages=stages, seed=seed, output=str(out))
    d["export"] = dict(d.get("export", {}), eta=export_eta)
    if init_from:
        d["lora"] = dict(d.get("lora", {}), init_from=init_from)
    cfg = load_config(extra=d)
    t0 = time.time()
    results = Trainer(cfg).run()
    results["train_seconds"] = round(time.time() - t0, 1)
    results["optimizer_steps"] = sum(int(s["steps"]) for s in stages)
    results["batch_size"] = cfg.data.batch_size
    return results


# -- evaluation ------------------------------------------------------------------------------------
class Evaluator:
    """The teacher, its conditioner and classifier, held-out features, and per-seed eval sets."""

    def __init__(
        self,
        model: str,
        per_digit: int,
        eval_seeds: list[int],
        ref_steps: int,
        teacher_cfg: float,
        path: str | None = None,
    ):
        """``model`` (a model kind) at ``path`` (for kind embedded: a packaged name such as "polarity"
        or a folder; None: the default); the reader and real digits follow the model's data layout."""
        from train.conditioning import TextConditioner
        from train.config import ModelConfig
        from hypersd_models.loading import load_model
        from train.metrics import classifier_features, digit_eval_set, layout_judge

        self.m = load_model(ModelConfig(kind=model, path=path))
        self.unet = self.m.unet.eval()
        self.clf = self.m.extras["classifier"]
        self.layout = self.m.extras.get("data_layout", "digits")
        self.cond = TextConditioner(
            self.m.text_encoders, self.m.tokenizers, "cpu", torch.float32, resolution=self.m.resolution, memo=True
        )
        res, ch = self.unet.config.sample_size, self.unet.config.in_channels
        self.reader, held_out = layout_judge(res, self.layout)
        self.real = {"reader": self.reader.features(held_out), "reward": classifier_features(self.clf, held_out)}
        self.n_real = len(held_out)
        self.ref_steps = ref_steps
        self.sets = {s: digit_eval_set(per_digit, res, s, ch) for s in eval_seeds}
        self.use_reference(teacher_cfg)

    def use_reference(self, teacher_cfg: float) -> None:
        """Judge against the teacher's ``ref_steps``-step samples at ``teacher_cfg`` (made for every eval set)."""
        self.teacher_cfg, self.refs, self.ref_seconds = teacher_cfg, {}, {}
        for s in self.sets:
            t0 = time.perf_counter()
            self.refs[s] = self.generate(s, self.ref_steps, teacher_cfg)
            self.ref_seconds[s] = time.perf_counter() - t0

    def generate(self, seed: int, steps: int, cfg: float, eta: float = 0.0, onestep: int | None = None) -> torch.Tensor:
        from train.grids import generate

        labels, prompts, noise = self.sets[seed]
        return generate(
            self.unet,
            self.cond,
            prompts,
            noise,
            steps=steps,
            cfg=cfg,
            eta=eta,
            schedule=self.m.schedule,
            prediction_type=self.m.prediction_type,
            seed=seed,
            onestep_timestep=onestep,
        )

    def score(self, seed: int, images: torch.Tensor) -> dict:
        from train.metrics import score_images

        return score_images(self.clf, images, self.sets[seed][0], self.real, self.refs[seed], reader=self.reader)

    def per_step_rows(self, stage_paths: dict[int, str], eta: float) -> dict[int, list[dict]]:
        """{k: scores} of each stage's own LoRA (k segments) sampled at k steps."""
        return {k: self.rows(p, [k], 1.0, eta)[k] for k, p in sorted(stage_paths.items())}

    def rows(self, lora_path: str | None, steps_list, cfg: float, eta: float) -> dict[int, list[dict]]:
        """{steps: [scores per eval seed]} with the LoRA merged (None: the teacher alone)."""
        from hypersd_core.lora_formats import HyperSDMetadata, load_lora
        from hypersd_core.lora_merge import LoraMerge

        merge, onestep = None, None
        if lora_path:
            sd, meta = load_lora(lora_path)
            merge = LoraMerge(self.unet, sd, 1.0, metadata=meta)
            md = HyperSDMetadata.from_header(meta)
            onestep = md.onestep_timestep if md is not None else None  # DMD LoRAs: their one-step sampler
        try:
            out = {}
            for k in steps_list:
                out[k] = []
                for s in self.sets:
                    t0 = time.perf_counter()
                    imgs = self.generate(s, k, cfg, eta, onestep if k == 1 else None)
                    sec = time.perf_counter() - t0
                    out[k].append(dict(self.score(s, imgs), seconds=sec))
            return out
        finally:
            if merge is not None:
                merge.remove()


def lora_eta(path: str) -> float:
    from hypersd_core.lora_formats import HyperSDMetadata, load_lora

    md = HyperSDMetadata.from_header(load_lora(path)[1])
    return float(md.eta) if md is not None and md.eta is not None else 0.0


def summarise(values: list[float]) -> dict:
    """Mean, std and the half-width of the 95% confidence interval of the mean (Student t)."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = 0.0
    if n > 1:
        from scipy import stats

        ci = float(stats.t.ppf(0.975, n - 1) * std / n**0.5)
    return {"mean": statistics.fmean(values), "std": std, "ci95": ci, "n": n, "values": values}


# -- main ------------------------------------------------------------------------------------------
def run(args) -> dict:
    torch.set_num_threads(args.threads)
    quick = args.quick
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_seeds = [1000 + i for i in range(args.eval_seeds)]
    work = Path(args.work)
    data = base_config(args.model, quick, args.embedded)
    data["threads"] = args.threads  # the preset's own count would override --threads in every run
    budget = args.stage_steps or args.steps_per_stage
    tscd = tscd_stages(data, quick, steps=budget)
    methods_cfg = {
        TSCD: dict(stages=tscd),
        TSCD_MSE: dict(stages=tscd_stages(data, quick, adversarial=False, steps=budget)),
        TSCD21: dict(stages=two_stage(tscd)),
        BASELINE: dict(stages=[baseline_stage(tscd)]),
        FEEDBACK: dict(stages=[feedback_stage(tscd, quick)], init=TSCD),
        UNIFIED: dict(stages=[unified_stage(tscd, quick)], init=FEEDBACK, eta=args.unified_eta),
    }
    default = [m for m in methods_cfg if m not in (TSCD_MSE, TSCD21) or args.ablation]
    methods = [m for m in methods_cfg if m in args.methods.split(";")] if args.methods else default
    t_start = time.time()
    teacher_cfg = float(data.get("sample", {}).get("teacher_cfg", 3.0))
    ev = Evaluator(
        args.model, 2 if quick else args.per_digit, eval_seeds, 4 if quick else 50, teacher_cfg, path=args.embedded
    )
    steps = STEPS[: 2 if quick else 4]
    # the students' model calls: cfg > 1 costs two calls a step
    teacher_steps = sorted({k // 2 for k in steps if k > 1} | ({2, 4} if quick else {25, 50}))
    cfg1_steps = list(steps)
    result: dict = {
        "machine": machine_info(),
        "quick": quick,
        "model": args.model if args.embedded is None else f"{args.model} {args.embedded}",
        "data_layout": ev.layout,
        "train_seeds": seeds,
        "eval_seeds": eval_seeds,
        "samples_per_eval_seed": len(ev.sets[eval_seeds[0]][0]),
        "real_samples": ev.n_real,
        "reference": f"teacher DDIM {ev.ref_steps} steps, cfg {teacher_cfg:g}",
        "student_sampler": "TSCD sampler, trailing timesteps, cfg 1, eta from the LoRA metadata (1 step = one call at t=999)",
        "stages": {m: methods_cfg[m]["stages"] for m in methods},
        "runs": {},
        "rows": {},
        "init_from": {m: methods_cfg[m].get("init") for m in methods},
    }
    t_rows = {}
    for k in teacher_steps:
        if k == ev.ref_steps:  # the reference run itself (trajectory error 0 by definition)
            t_rows[k] = [dict(ev.score(s, ev.refs[s]), seconds=ev.ref_seconds[s]) for s in eval_seeds]
        else:
            t_rows[k] = ev.rows(None, [k], teacher_cfg, 0.0)[k]
    result["rows"][TEACHER] = {str(k): _agg(v, nfe=2 * k) for k, v in t_rows.items()}
    print(f"[{time.time() - t_start:6.0f}s] teacher cfg {teacher_cfg:g} rows done", flush=True)
    result["rows"][TEACHER_CFG1] = {str(k): _agg(v, nfe=k) for k, v in ev.rows(None, cfg1_steps, 1.0, 0.0).items()}
    per_method: dict[str, dict[int, list[dict]]] = {m: {k: [] for k in steps} for m in methods}
    per_step = {name: {} for m, name in PER_STEP.items() if m in methods}
    for seed in seeds:
        loras: dict[str, str] = {}
        for m in methods:
            spec = methods_cfg[m]
            init = spec.get("init")
            if init and init not in loras:
                raise ValueError(f"{m!r} starts from {init!r}: run that method too (--methods)")
            out = work / f"seed{seed}" / _slug(m)
            print(f"[{time.time() - t_start:6.0f}s] training {m} (seed {seed}) -> {out}", flush=True)
            summary = train_run(
                data, spec["stages"], out, seed, init_from=loras.get(init), export_eta=spec.get("eta", 0.0)
            )
            loras[m] = summary["lora"]["kohya"]
            result["runs"].setdefault(m, []).append(
                {
                    "seed": seed,
                    "lora": Path(loras[m]).name,
                    "train_seconds": summary["train_seconds"],
                    "optimizer_steps": summary["optimizer_steps"],
                    "batch_size": summary["batch_size"],
                    "stage_seconds": summary.get("stage_seconds"),
                }
            )
            eta = lora_eta(loras[m])
            print(f"[{time.time() - t_start:6.0f}s] evaluating {m} (eta {eta:g})", flush=True)
            for k, v in ev.rows(loras[m], list(per_method[m]), 1.0, eta).items():
                per_method[m][k] += v
            if m in PER_STEP:  # each stage's own LoRA at its own step count
                name = PER_STEP[m]
                paths = {
                    int(s["segments"]): str(out / "lora" / f"stage{i + 1}_tscd_k{s['segments']}.safetensors")
                    for i, s in enumerate(spec["stages"][:-1])
                }
                paths[int(spec["stages"][-1]["segments"])] = loras[m]
                for k, v in ev.per_step_rows(paths, eta).items():
                    per_step[name].setdefault(k, []).extend(v)
    n_eval = len(eval_seeds)
    for m in methods:
        result["rows"][m] = {str(k): _agg(v, nfe=k, group=n_eval) for k, v in per_method[m].items()}
    for name, by_k in per_step.items():
        result["rows"][name] = {str(k): _agg(v, nfe=k, group=n_eval) for k, v in sorted(by_k.items())}
    result["verdict"] = verdict(result)
    result["equal_calls"] = equal_calls(result, teacher_cfg)
    result["total_seconds"] = round(time.time() - t_start, 1)
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _agg(scores: list[dict], nfe: int, group: int | None = None) -> dict:
    """Per-metric summary; with ``group`` (eval seeds per training seed) the spread is over training seeds."""
    out = {"nfe": nfe}
    for k in METRICS:
        vals = [float(s[k]) for s in scores]
        if group and len(vals) > group:
            vals = [statistics.fmean(vals[i : i + group]) for i in range(0, len(vals), group)]
        out[k] = summarise(vals)
    return out


def equal_calls(result: dict, cfg: float) -> dict:
    """Each student row vs the untrained teacher at the same model calls (``train.evaluate.teacher_at``:
    1 call = teacher 1 step cfg 1, 2k calls = teacher k steps at cfg ``cfg``), judged on the means
    by ``lora_wins`` ("better": + = the LoRA is better)."""
    from train.evaluate import JUDGED, lora_wins, teacher_at

    rows = result["rows"]
    out = {}
    for name, by_k in rows.items():
        if name.startswith("teacher"):
            continue
        for k, r in by_k.items():
            at = teacher_at(int(r["nfe"]), cfg)
            base = None if at is None else (rows[TEACHER_CFG1] if at[1] == 1 else rows[TEACHER]).get(str(at[0]))
            if base is None:
                continue
            lora, teacher = ({m: row[m]["mean"] for m, _ in JUDGED} for row in (r, base))
            out.setdefault(name, {})[k] = {
                "teacher": f"teacher DDIM {at[0]} cfg {at[1]:g}",
                "better": {m: (lora[m] - teacher[m]) * (1 if up else -1) for m, up in JUDGED},
                "lora_wins": lora_wins(lora, teacher),
            }
    return out


def verdict(result: dict) -> dict:
    """The TSCD variants vs the single-stage baseline, per step count and metric (relative change,
    + = TSCD better)."""
    rows = result["rows"]
    out = {}
    for name in (TSCD, TSCD_MSE, TSCD21, *PER_STEP.values()):
        if name not in rows or BASELINE not in rows:
            continue
        per = {}
        for k, r in rows[name].items():
            b = rows[BASELINE].get(k)
            if b is None:
                continue
            rel = lambda m: (b[m]["mean"] - r[m]["mean"]) / b[m]["mean"] if b[m]["mean"] else 0.0  # noqa: E731
            per[k] = {
                "frechet_teacher_rel_improvement": rel("frechet_teacher"),
                "frechet_rel_improvement": rel("frechet"),
                "adherence_diff": r["adherence"]["mean"] - b["adherence"]["mean"],
                "trajectory_error_rel_improvement": rel("trajectory_error"),
            }
        out[name] = per
    return out


def _pm(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    spread = s.get("ci95", s["std"])
    return f"{s['mean'] * scale:.{digits}g} ± {spread * scale:.2g}"


def markdown(result: dict) -> str:
    lines = [
        f"Machine: {describe(result['machine'])}\n\n",
        f"{result['samples_per_eval_seed']} samples per eval seed x {len(result['eval_seeds'])} eval seeds x "
        f"{len(result['train_seeds'])} training seed(s). Judge: the independent reader (sklearn MLP on the training "
        f"digits); Fréchet → teacher = distance to the teacher's {result['reference']} samples (fidelity), "
        f"→ real = to {result['real_samples']} held-out digits; trajectory error vs {result['reference']}; "
        f"reward adh. = the embedded classifier (the feedback reward). Mean ± 95% CI over training seeds "
        f"(over eval seeds for the teacher).\n\n",
    ]
    if result.get("quick"):
        lines.append("**QUICK MODE: a few training steps; the numbers check the script and mean nothing.**\n\n")
    rows = []
    for method, by_steps in result["rows"].items():
        for k, r in by_steps.items():
            teacher = method.startswith("teacher")
            label = f"{method} {k}" if teacher else method
            rows.append(
                [
                    label,
                    "-" if teacher else int(k),
                    r["nfe"],
                    _pm(r["trajectory_error"]),
                    _pm(r["frechet_teacher"]),
                    _pm(r["adherence"]),
                    _pm(r["frechet"]),
                    _pm(r["adherence_reward"]),
                ]
            )
    lines.append(
        markdown_table(
            [
                "method",
                "steps",
                "calls",
                "traj. error (↓)",
                "Fréchet → teacher (↓)",
                "adherence (↑)",
                "Fréchet → real (↓)",
                "reward adh.",
            ],
            rows,
        )
    )
    eq = result.get("equal_calls", {})
    if eq:
        lines.append(
            "\nEach student row vs the untrained teacher at the same model calls (1 call: 1 step cfg 1; "
            "2k calls: k steps at the guided cfg). Cells: who is better on traj. error / Fréchet → teacher / "
            "adherence (ties on adherence go to the LoRA).\n\n"
        )
        erows = []
        for name, by_k in eq.items():
            for k, c in by_k.items():
                w = c["lora_wins"]
                erows.append(
                    [name, k, c["teacher"]]
                    + ["LoRA" if w[m] else "teacher" for m in ("trajectory_error", "frechet_teacher", "adherence")]
                )
        lines.append(
            markdown_table(
                ["LoRA", "calls", "teacher at equal calls", "traj. error", "Fréchet → teacher", "adherence"], erows
            )
        )
    runs = result.get("runs", {})
    if runs:
        lines.append("\nTraining runs (optimizer steps x batch, CPU seconds):\n\n")
        lines.append(
            markdown_table(
                ["method", "seed", "steps", "batch", "train s"],
                [
                    [m, r["seed"], r["optimizer_steps"], r["batch_size"], r["train_seconds"]]
                    for m, rs in runs.items()
                    for r in rs
                ],
            )
        )
    lines.append("\n" + verdict_text(result) + "\n")
    return "".join(lines)


def verdict_text(result: dict) -> str:
    v = result.get("verdict", {})
    if not v:
        return ""
    out = []
    for name, per in v.items():
        parts = []
        for k, d in per.items():
            parts.append(
                f"{k} step{'s' if k != '1' else ''}: trajectory error {100 * d['trajectory_error_rel_improvement']:+.0f}%, "
                f"Fréchet → teacher {100 * d['frechet_teacher_rel_improvement']:+.0f}%, "
                f"adherence {100 * d['adherence_diff']:+.1f} pts"
            )
        wins = sum(
            (d["frechet_teacher_rel_improvement"] > 0)
            + (d["adherence_diff"] > 0)
            + (d["trajectory_error_rel_improvement"] > 0)
            for d in per.values()
        )
        target = [
            k
            for k in ("2", "4")
            if k in per
            and per[k]["trajectory_error_rel_improvement"] >= 0.2
            and per[k]["frechet_teacher_rel_improvement"] >= 0.2
        ]
        out.append(
            f"**{name} vs {BASELINE}** (same optimizer steps and batch; + = {name} better): better on {wins} of "
            f"{3 * len(per)} metric x step-count cells; the >=20% target (traj. error and Fréchet → teacher) "
            f"is met at {', '.join(target) + ' steps' if target else 'no step count of 2 and 4'}. "
            + "; ".join(parts)
            + "."
        )
    return "\n\n".join(out)


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (
        ("frechet_teacher", "Fréchet → teacher 50 (↓)"),
        ("adherence", "adherence, independent reader (↑)"),
        ("trajectory_error", "trajectory error (↓)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, title) in zip(axes, metrics):
        for method, by_steps in result["rows"].items():
            if method.startswith("teacher"):
                for k, r in by_steps.items():
                    ax.axhline(
                        r[key]["mean"],
                        ls="--",
                        lw=1,
                        color="gray" if k == list(by_steps)[0] else "black",
                        label=f"teacher DDIM {k} (NFE {r['nfe']})",
                    )
                continue
            ks = [int(k) for k in by_steps]
            m = [by_steps[str(k)][key]["mean"] for k in ks]
            s = [by_steps[str(k)][key]["std"] for k in ks]
            ax.errorbar(ks, m, yerr=s, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(k) for k in next(v for n, v in result["rows"].items() if not n.startswith("teacher"))])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("student steps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Embedded digits, {describe(result['machine'])[:110]}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def stage_steps(text: str) -> list[int]:
    """``--stage-steps 50,50,200,100`` -> [50, 50, 200, 100] (argparse type: a bad value is one line)."""
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every stage needs at least one step, got {text!r}")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 steps per stage, few samples: checks the script end to end")
    ap.add_argument("--model", default="embedded", choices=("embedded", "tiny"))
    ap.add_argument(
        "--embedded", default=None, help='another embedded teacher: a packaged name ("polarity") or a folder'
    )
    ap.add_argument("--seeds", default="0", help="training seeds, comma separated")
    ap.add_argument("--eval-seeds", type=int, default=3, help="evaluation seeds (noise + captions) per trained LoRA")
    ap.add_argument("--per-digit", type=int, default=20, help="samples per digit per eval seed")
    ap.add_argument("--methods", default=None, help=f"';'-separated subset, e.g. '{TSCD};{BASELINE}'")
    ap.add_argument(
        "--steps-per-stage",
        type=int,
        default=60,
        help="optimizer steps of every stage (the embedded preset has 120; 60 fits the CPU time box)",
    )
    ap.add_argument(
        "--stage-steps",
        type=stage_steps,
        default=None,
        help="optimizer steps of each TSCD stage, k=8,4,2,1 in order (e.g. 50,50,200,100); "
        "overrides --steps-per-stage; the single-stage baseline gets their sum",
    )
    ap.add_argument("--ablation", action="store_true", help=f"also train {TSCD_MSE!r} and {TSCD21!r}")
    ap.add_argument("--unified-eta", type=float, default=0.3, help="eta recorded in the unified LoRA's metadata")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for training outputs (default: a temp folder)")
    ap.add_argument("--out", default=None, help="results JSON (a .md table and .png plot are written beside it)")
    args = ap.parse_args(argv)
    try:  # before any training: a wrong --stage-steps count is one line
        tscd_stages(base_config(args.model, args.quick), args.quick, steps=args.stage_steps)
        if args.embedded is not None:
            from .equal_calls_large_n_embedded import check_embedded

            if args.model != "embedded":
                raise ValueError("--embedded names an embedded teacher; it needs --model embedded")
            check_embedded(args.embedded, "--embedded")
    except ValueError as e:
        ap.error(str(e))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hypersd-quality-") as tmp:
        args.work = args.work or tmp
        result = run(args)
    name = "quality_embedded_quick" if args.quick else "quality_embedded"
    out = Path(args.out) if args.out else RESULTS_DIR / f"{name}.json"
    result["command"] = "python -m benchmarks.quality_embedded " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(out, result)
    md = markdown(result)
    write_text(out.with_suffix(".md"), md)
    plot(result, out.with_suffix(".png"))
    print(md)
    print(f"wrote {out} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
