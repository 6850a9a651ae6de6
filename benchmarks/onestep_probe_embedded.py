"""Two checks behind the one-step recipe (benchmarks/RESULTS.md §1b), on the embedded digit teacher:

1. noise of the teacher's own one-step output (DDIM from pure noise at timestep t): an eps model's
   x̂0 = (x_t - σ ε̂)/α amplifies its errors by σ/α, largest at t = 999;
2. does the DMD gradient point the right way? ``dmd.distribution_matching`` applied straight to
   images (pixels as parameters, Adam), with the fake score a LoRA trained on them by
   ``dmd.fake_score_loss``, starting from a TSCD LoRA's noisy 1-step images: their
   high-frequency energy should fall and their digit reward rise.

    python -m benchmarks.onestep_probe_embedded --lora <run>/hypersd_lora_diffusers \
        --out benchmarks/results/onestep_probe_embedded.json       # ~4 min on one CPU thread
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .report import write_text


def main(argv=None) -> dict:
    from train.conditioning import TextConditioner
    from train.config import LoraConfig
    from train.grids import generate
    from train.metrics import digit_eval_set
    from train.rewards.digits import DigitReward, high_frequency_energy
    from train.stages.adapters import add_zero_adapter, use_adapter
    from train.stages.dmd import DMDOptions, distribution_matching, fake_score_loss

    from .feedback_dmd_embedded import load_student

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--lora", required=True, help="diffusers LoRA folder of a TSCD run (its 1-step images start check 2)"
    )
    ap.add_argument("--timesteps", type=int, nargs="+", default=[999, 900, 800, 700])
    ap.add_argument("--per-digit", type=int, default=5)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--pixel-lr", type=float, default=0.01)
    ap.add_argument("--fake-updates", type=int, default=2)
    ap.add_argument("--real-cfg", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/onestep_probe_embedded.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t_start = time.time()

    m = load_student(a.lora, 8, LoraConfig().target_modules)
    unet, res = m.unet, m.resolution
    conditioner = TextConditioner(m.text_encoders, m.tokenizers, "cpu", resolution=res)
    labels, prompts, noise = digit_eval_set(a.per_digit, res, 7, m.channels)
    kw = dict(schedule=m.schedule, prediction_type=m.prediction_type)
    out = {"n_images": len(labels), "teacher_onestep_hf_energy": {}, "dmd_on_pixels": []}

    def hf(x):
        return round(float(high_frequency_energy(x).mean()), 4)

    with torch.no_grad():
        unet.disable_adapters()
        for cfg in (1.0, 3.0):
            for t in a.timesteps:
                x = generate(unet, conditioner, prompts, noise, steps=1, cfg=cfg, eta=0.0, onestep_timestep=t, **kw)
                out["teacher_onestep_hf_energy"][f"t={t} cfg {cfg:g}"] = hf(x)
            x = generate(unet, conditioner, prompts, noise, steps=25, cfg=cfg, eta=0.0, **kw)
            out["teacher_onestep_hf_energy"][f"DDIM 25 cfg {cfg:g}"] = hf(x)
        unet.enable_adapters()
        start = generate(unet, conditioner, prompts, noise, steps=1, cfg=1.0, eta=0.0, **kw)

    cond, _ = conditioner.encode(prompts)
    uncond, _ = conditioner.encode([""] * len(prompts))
    fake = add_zero_adapter(unet, "fake", like="default")
    for p in fake:
        p.data = p.data.float()
    fake_opt = torch.optim.AdamW(fake, lr=1e-3)
    x = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([x], lr=a.pixel_lr)
    opts = DMDOptions(real_cfg=a.real_cfg, fake_updates=a.fake_updates)
    reward, gen = DigitReward(m.extras["classifier"]), torch.Generator().manual_seed(0)

    def record(i):
        with torch.no_grad():
            out["dmd_on_pixels"].append(
                {"iter": i, "hf_energy": hf(x), "digit_reward": round(float(reward(x, prompts).mean()), 4)}
            )

    record(0)
    for i in range(1, a.iters + 1):
        use_adapter(unet, "fake", fake)
        for _ in range(a.fake_updates):
            fake_score_loss(unet, x, cond, opts, m.schedule, m.prediction_type, gen).backward()
            fake_opt.step()
            fake_opt.zero_grad(set_to_none=True)
        loss = distribution_matching(unet, x, cond, uncond, opts, m.schedule, "default", m.prediction_type, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 50 == 0 or i == a.iters:
            record(i)
    out["seconds"] = round(time.time() - t_start, 1)
    out["settings"] = {k: v for k, v in vars(a).items() if k != "out"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(a.out, json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
