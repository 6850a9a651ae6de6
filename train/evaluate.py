"""Metrics of a trained student on the embedded digits (see metrics.py), as a dict and a table."""

from __future__ import annotations

import time


from .grids import generate
from .lora import load_lora_tensors, lora_tensors
from .metrics import classifier_features, digit_eval_set, score_images


def evaluate_digits(trainer, stage) -> dict:
    """Teacher DDIM (eval.teacher_steps) and the student at eval.steps, scored against held-out digits."""
    from .digits import load_digit_splits

    e, m = trainer.cfg.eval, trainer.model
    clf = m.extras.get("classifier")
    if clf is None:
        raise ValueError("eval needs the digit classifier (model.kind embedded or tiny)")
    clf = clf.to(trainer.acc.device)
    res = m.unet.config.sample_size
    labels, prompts, noise = digit_eval_set(e.per_digit, res, e.seed, m.unet.config.in_channels)
    noise = noise.to(trainer.acc.device)
    _, test = load_digit_splits(res)
    real = classifier_features(clf, test.images.to(trainer.acc.device))
    kw = dict(schedule=m.schedule, prediction_type=m.prediction_type, decode=trainer.decode)
    out = {"n_samples": len(labels), "real_samples": len(test.labels), "eta": e.eta,
           "reference": f"teacher DDIM {e.reference_steps} steps, cfg {e.teacher_cfg:g}", "rows": {}}
    with trainer.teacher(local=True) as teacher:
        t0 = time.time()
        ref = generate(teacher, trainer.conditioner, prompts, noise, steps=e.reference_steps, cfg=e.teacher_cfg, eta=0.0, **kw)
        out["rows"][f"teacher DDIM {e.reference_steps}"] = dict(score_images(clf, ref, labels, real, ref), steps=e.reference_steps,
                                                                  nfe=2 * e.reference_steps, seconds=round(time.time() - t0, 2))
        t0 = time.time()
        imgs = generate(teacher, trainer.conditioner, prompts, noise, steps=e.teacher_steps, cfg=e.teacher_cfg, eta=0.0, **kw)
        out["rows"][f"teacher DDIM {e.teacher_steps}"] = dict(score_images(clf, imgs, labels, real, ref), steps=e.teacher_steps,
                                                                nfe=2 * e.teacher_steps, seconds=round(time.time() - t0, 2))
    def student_row(k: int, onestep: int | None = None) -> dict:
        t0 = time.time()
        imgs = generate(trainer.base_unet, trainer.conditioner, prompts, noise, steps=k, cfg=1.0, eta=e.eta,
                        onestep_timestep=onestep, **kw)
        return dict(score_images(clf, imgs, labels, real, ref), steps=k, nfe=k, seconds=round(time.time() - t0, 2))

    onestep = stage.metadata().get("onestep_timestep")  # a DMD stage's one-step sampler
    with stage.sampling_context():
        for k in e.steps:
            out["rows"][f"student {k}"] = student_row(k)
            if k == 1 and onestep is not None:
                out["rows"][f"student 1 t={onestep}"] = student_row(1, onestep)
    # Each stage's own LoRA at its own step count (k segments -> k steps), as Hyper-SD ships N-step LoRAs.
    from .trainer import init_lora_from

    final = lora_tensors(trainer.base_unet)
    try:
        for i, s in enumerate(trainer.cfg.stages):
            path = trainer.out / "lora" / f"stage{i + 1}_{s.name}_k{s.segments}.safetensors"
            if s.name != "tscd" or not path.is_file() or i == len(trainer.cfg.stages) - 1:
                continue
            init_lora_from(trainer.base_unet, str(path))
            imgs = generate(trainer.base_unet, trainer.conditioner, prompts, noise, steps=s.segments, cfg=1.0,
                            eta=e.eta, **kw)
            out["rows"][f"stage k={s.segments} LoRA {s.segments}"] = dict(
                score_images(clf, imgs, labels, real, ref), steps=s.segments, nfe=s.segments)
    finally:
        load_lora_tensors(trainer.base_unet, final)
    return out


def format_table(metrics: dict) -> str:
    lines = [f"{'sampler':<22} {'NFE':>4} {'Frechet':>9} {'adherence':>9} {'traj.err':>9}"]
    for name, r in metrics["rows"].items():
        lines.append(f"{name:<22} {r['nfe']:>4} {r['frechet']:>9.3f} {r['adherence']:>9.3f} {r.get('trajectory_error', 0):>9.4f}")
    lines.append(f"(n={metrics['n_samples']} samples vs {metrics['real_samples']} held-out digits; "
                 f"trajectory error vs {metrics['reference']})")
    return "\n".join(lines)
