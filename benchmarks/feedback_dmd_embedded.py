"""TSCD alone vs TSCD + feedback vs the unified LoRA (feedback + DMD) on the embedded digit teacher.

Every LoRA is sampled from the same noise and prompts at 1/2/4/8 steps (our TSCD sampler, cfg 1)
and scored with train/metrics.py (Fréchet distance and adherence in the shipped classifier's
feature space, trajectory error vs the teacher's 50-step DDIM) plus two numbers the feedback
reward did not optimise: adherence under an independent logistic-regression digit reader trained
on the raw training pixels, and the high-frequency energy of the images (real digits: ~0.012).
The shipped classifier is also the feedback reward, so its adherence/Fréchet partly measure
reward fitting: read the independent column too.

    python -m benchmarks.feedback_dmd_embedded --lora tscd=outA/hypersd_lora_diffusers \
        --lora feedback=outB/hypersd_lora_diffusers --out benchmarks/results/feedback_dmd_embedded.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .report import write_text


def load_student(folder: str, rank: int, target_modules):
    """The embedded UNet with a diffusers-layout LoRA (<run>/hypersd_lora_diffusers) applied."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from train.config import ModelConfig
    from train.lora import add_lora
    from hypersd_models.loading import load_model

    m = load_model(ModelConfig(kind="embedded"))
    add_lora(m.unet, rank, None, target_modules)
    sd = load_file(str(Path(folder) / "pytorch_lora_weights.safetensors"))
    res = set_peft_model_state_dict(m.unet, {k.removeprefix("unet."): v for k, v in sd.items()}, adapter_name="default")
    if getattr(res, "unexpected_keys", None):
        raise ValueError(f"{folder}: LoRA keys do not fit the embedded UNet ({res.unexpected_keys[:3]})")
    return m


def onestep_timestep(folder: str, override: int | None) -> int | None:
    """The one-step sampler's timestep: ``override``, else the one in the run's exported LoRA
    header (<run>/hypersd_lora.safetensors, written by DMD/unified stages), else None."""
    if override is not None:
        return override
    from hypersd_core.lora_formats import HyperSDMetadata, load_lora

    kohya = Path(folder).parent / "hypersd_lora.safetensors"
    if not kohya.is_file():
        return None
    md = HyperSDMetadata.from_header(load_lora(kohya)[1])
    return None if md is None else md.onestep_timestep


def independent_reader(resolution: int):
    """Logistic regression on raw training pixels: a digit reader the reward never saw."""
    from sklearn.linear_model import LogisticRegression

    from train.digits import load_digit_splits

    train, test = load_digit_splits(resolution)
    clf = LogisticRegression(max_iter=3000, C=0.5).fit(train.images.flatten(1).numpy(), train.labels.numpy())
    return clf, float(clf.score(test.images.flatten(1).numpy(), test.labels.numpy()))


def main(argv=None) -> dict:
    from train.conditioning import TextConditioner
    from train.config import LoraConfig
    from train.digits import load_digit_splits
    from train.grids import generate, save_grid
    from train.metrics import classifier_features, digit_eval_set, score_images
    from train.rewards.digits import DigitReward, high_frequency_energy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lora", action="append", required=True, metavar="NAME=DIFFUSERS_FOLDER")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--eta", type=float, nargs="+", default=[0.0])
    ap.add_argument("--per-digit", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument(
        "--onestep-timestep",
        type=int,
        default=None,
        help="also score the one-step sampler at this timestep (default: the LoRA header's, if any)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/feedback_dmd_embedded.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()

    targets = LoraConfig().target_modules
    base = load_student(a.lora[0].split("=", 1)[1], a.rank, targets)
    clf = base.extras["classifier"]
    res = base.resolution
    cond = TextConditioner(base.text_encoders, base.tokenizers, "cpu", resolution=res)
    labels, prompts, noise = digit_eval_set(a.per_digit, res, a.seed, base.channels)
    _, test = load_digit_splits(res)
    real = classifier_features(clf, test.images)
    reader, reader_acc = independent_reader(res)
    reward = DigitReward(clf)
    kw = dict(schedule=base.schedule, prediction_type=base.prediction_type)

    def row(images, ref, **extra):
        r = reward(images, prompts)
        out = score_images(clf, images, labels, real, ref)
        out["independent_adherence"] = float(
            (torch.as_tensor(reader.predict(images.flatten(1).numpy())) == labels).float().mean()
        )
        out["digit_reward"] = float(r.mean())
        out["hf_energy"] = float(high_frequency_energy(images).mean())
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in {**out, **extra}.items()}

    result = {
        "n_samples": len(labels),
        "independent_reader_test_accuracy": round(reader_acc, 4),
        "real_digits": {
            "hf_energy": round(float(high_frequency_energy(test.images).mean()), 4),
            "independent_adherence": round(reader_acc, 4),
        },
        "rows": {},
    }
    with torch.no_grad():
        base.unet.disable_adapters()
        ref = generate(base.unet, cond, prompts, noise, steps=50, cfg=3.0, eta=0.0, **kw)
        result["rows"]["teacher DDIM 50 cfg 3"] = row(ref, ref, nfe=100)
        t25 = generate(base.unet, cond, prompts, noise, steps=25, cfg=3.0, eta=0.0, **kw)
        result["rows"]["teacher DDIM 25 cfg 3"] = row(t25, ref, nfe=50)
        base.unet.enable_adapters()
        grid_prompts = [f"a handwritten digit {d}" for d in range(10)]
        grid_noise = torch.randn((10, base.channels, res, res), generator=torch.Generator().manual_seed(1234))
        for spec in a.lora:
            name, folder = spec.split("=", 1)
            m = load_student(folder, a.rank, targets)
            grid = {}
            onestep = onestep_timestep(folder, a.onestep_timestep)
            if onestep is not None and 1 in a.steps:
                t0 = time.time()
                imgs = generate(m.unet, cond, prompts, noise, steps=1, cfg=1.0, eta=0.0, onestep_timestep=onestep, **kw)
                result["rows"][f"{name} 1 step t={onestep}"] = row(imgs, ref, nfe=1, seconds=round(time.time() - t0, 2))
                grid[f"{name} 1 step t={onestep}"] = generate(
                    m.unet, cond, grid_prompts, grid_noise, steps=1, cfg=1.0, eta=0.0, onestep_timestep=onestep, **kw
                )
            for eta in a.eta:
                for k in a.steps:
                    t0 = time.time()
                    imgs = generate(m.unet, cond, prompts, noise, steps=k, cfg=1.0, eta=eta, seed=a.seed, **kw)
                    result["rows"][f"{name} {k} step eta {eta:g}"] = row(
                        imgs, ref, nfe=k, seconds=round(time.time() - t0, 2)
                    )
                    if eta == a.eta[0]:
                        grid[f"{name} {k} step"] = generate(
                            m.unet, cond, grid_prompts, grid_noise, steps=k, cfg=1.0, eta=eta, **kw
                        )
            save_grid(grid, Path(a.out).with_name(f"{Path(a.out).stem}_{name}.png"))
    result["seconds"] = round(time.time() - t_start, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(a.out, json.dumps(result, indent=2))
    print(format_rows(result))
    return result


def format_rows(result: dict) -> str:
    cols = ("frechet", "adherence", "independent_adherence", "trajectory_error", "digit_reward", "hf_energy")
    lines = [f"{'sampler':<28}" + "".join(f"{c[:12]:>13}" for c in cols)]
    for name, r in result["rows"].items():
        lines.append(f"{name:<28}" + "".join(f"{r.get(c, float('nan')):>13.4f}" for c in cols))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
