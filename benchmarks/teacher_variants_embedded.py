"""Would a harder embedded default let a LoRA win adherence at 4 and 8 model calls?

A LoRA that reproduces the teacher's many-step samples can beat the teacher's few-step digits on
adherence only where those few-step digits read *worse* than the many-step ones. On the committed
default they read better (results/teacher_gap_embedded). This trains a probe teacher per data
variant, at the committed teacher's budget and recipe (train.embedded.make_embedded.train_teacher),
and measures its few-step DDIM against its own many-step samples:

    python -m benchmarks.teacher_variants_embedded --variants default,polarity,latent

- ``default``: the committed teacher itself (nothing trained), the baseline;
- ``polarity``: every digit white-on-black or black-on-white at random, the caption silent on it
  (the class mean is flat grey, so a few-step average should read worse);
- ``latent``: latent diffusion as in Stable Diffusion: a small deterministic autoencoder (16x16 ->
  4x4x4) trained first, the teacher on its latents, samples decoded before they are read.

Judged by an independent reader (train.metrics.DigitReader) fitted on the variant's own layout, with
its accuracy on held-out real images and the unguided teacher's adherence as the checks that it
discriminates. Writes results/teacher_variants_embedded.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from .machine import machine_info
from .report import RESULTS_DIR, markdown_table, write_results

VARIANTS = ("default", "polarity", "latent")
STEPS = (1, 2, 4, 8, 25)
REFERENCE = 50
EVAL_SEED = 4321
LATENT = (4, 4)  # channels, side


def parse_variants(text: str) -> list[str]:
    """``"default,latent"`` -> ["default", "latent"]; ValueError with what is wrong."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if not names or bad:
        raise ValueError(f"--variants {text!r}: choose from {', '.join(VARIANTS)} (comma separated)")
    return names


class AutoEncoder:
    """16x16x1 <-> 4x4x4, plain convolutions, trained on MSE; latents scaled to unit std (as SD's VAE)."""

    def __init__(self, train, steps: int, seed: int):
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        from train.digits import random_shift

        c = LATENT[0]
        torch.manual_seed(seed)
        self.enc = nn.Sequential(
            nn.Conv2d(1, 32, 3, 2, 1), nn.SiLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.SiLU(), nn.Conv2d(64, c, 3, 1, 1)
        )
        self.dec = nn.Sequential(
            nn.Conv2d(c, 64, 3, 1, 1),
            nn.SiLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(64, 32, 3, 1, 1),
            nn.SiLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(32, 32, 3, 1, 1),
            nn.SiLU(),
            nn.Conv2d(32, 1, 3, 1, 1),
        )
        params = [*self.enc.parameters(), *self.dec.parameters()]
        opt = torch.optim.Adam(params, 2e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(train.labels), (64,), generator=gen)
            x = random_shift(train.images[idx], 1, gen)
            loss = F.mse_loss(self.dec(self.enc(x)), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            self.scale = float(self.enc(train.images).std())

    def encode(self, x):
        return self.enc(x) / self.scale

    def decode(self, z):
        return self.dec(z * self.scale).clamp(-1, 1)


def latent_unet():
    from diffusers import UNet2DConditionModel

    from hypersd_models.embedded import TEXT_CONFIG

    c, side = LATENT
    return UNet2DConditionModel(
        sample_size=side,
        in_channels=c,
        out_channels=c,
        layers_per_block=1,
        block_out_channels=(64, 64),
        norm_num_groups=8,
        cross_attention_dim=TEXT_CONFIG["hidden_size"],
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )


def build_variant(name: str, steps: int, ae_steps: int, seed: int) -> dict:
    """The variant's teacher, text encoder, tokenizer, decoder (latent -> image), noise shape, reader
    and real held-out images (with labels)."""
    import torch

    from hypersd_models.embedded import build_text_encoder, find_tokenizer, load_embedded, load_tokenizer
    from train.digits import layout_held_out, load_digit_splits, random_shift
    from train.embedded.make_embedded import digit_batch, train_teacher
    from train.metrics import digit_reader

    train, test = load_digit_splits(16)
    t0 = time.time()
    v = {"decode": lambda x: x.clamp(-1, 1), "noise": (1, 16, 16), "reader": digit_reader(16)}
    v.update(real=test.images, real_labels=test.labels)
    if name == "default":
        t = load_embedded()
        return dict(v, unet=t.unet, text_encoder=t.text_encoder, tokenizer=t.tokenizer, train_seconds=0.0)
    tokenizer = load_tokenizer(find_tokenizer())
    text_encoder = build_text_encoder(seed=seed).half().float()  # as make_embedded: the fp16-rounded weights
    if name == "polarity":  # as make_embedded --data polarity draws it
        v.update(reader=digit_reader(16, "polarity"), real=layout_held_out(test, "polarity"))
        batch = functools.partial(digit_batch, layout="polarity")
        unet = train_teacher(
            train, text_encoder, tokenizer, seed, steps, sample_batch=batch, log_every=max(1, steps // 6)
        )
    else:  # latent
        ae = AutoEncoder(train, ae_steps, seed)
        v["decode"], v["noise"] = ae.decode, (LATENT[0], LATENT[1], LATENT[1])
        with torch.no_grad():
            v["reconstruction_adherence"] = round(
                v["reader"].adherence(ae.decode(ae.encode(test.images)), test.labels), 4
            )

        def batch(tr, b, g):
            idx = torch.randint(0, len(tr.labels), (b,), generator=g)
            with torch.no_grad():
                return idx, ae.encode(random_shift(tr.images[idx], 1, g))

        unet = train_teacher(
            train,
            text_encoder,
            tokenizer,
            seed,
            steps,
            build=latent_unet,
            sample_batch=batch,
            log_every=max(1, steps // 6),
        )
    return dict(v, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, train_seconds=round(time.time() - t0, 1))


def measure(v: dict, per_digit: int, cfg: float) -> dict:
    """The variant's reference (DDIM 50 at ``cfg``), its few-step rows and the unguided row."""
    import torch

    from hypersd_models.embedded import encode_prompts
    from train.evaluate import adherence_gap
    from train.metrics import digit_eval_set, frechet_distance, trajectory_error
    from train.sampling import sample_images

    from .report import JUDGED

    c, h, w = v["noise"]
    labels, prompts, noise = digit_eval_set(per_digit, h, EVAL_SEED, channels=c)
    reader, n = v["reader"], len(labels)
    cond = encode_prompts(v["text_encoder"], v["tokenizer"], prompts)
    uncond = encode_prompts(v["text_encoder"], v["tokenizer"], [""]).expand_as(cond)

    def run(steps, g):
        with torch.no_grad():
            return v["decode"](sample_images(v["unet"], noise, cond, uncond, steps=steps, cfg=g))

    ref = run(REFERENCE, cfg)
    ref_feats = reader.features(ref)

    def row(name, steps, g, x):
        r = {"name": name, "steps": steps, "calls": steps * (2 if g != 1 else 1), "cfg": g}
        r.update(
            adherence=round(reader.adherence(x, labels), 4),
            frechet_teacher=round(frechet_distance(reader.features(x), ref_feats), 4),
            trajectory_error=round(trajectory_error(x, ref), 4),
        )
        print(f"  {name:<24} " + "  ".join(f"{m} {r[m]:.4f}" for m in JUDGED), flush=True)
        return r

    reference = dict(
        row(f"teacher DDIM {REFERENCE} cfg {cfg:g}", REFERENCE, cfg, ref), frechet_teacher=0.0, trajectory_error=0.0
    )
    rows = [row(f"teacher DDIM {k} cfg {cfg:g}", k, cfg, run(k, cfg)) for k in STEPS]
    unguided = row(f"teacher DDIM {REFERENCE} cfg 1", REFERENCE, 1.0, run(REFERENCE, 1.0))
    checks = {
        "reader_on_real": round(reader.adherence(v["real"], v["real_labels"]), 4),
        "frechet_real_to_reference": round(frechet_distance(reader.features(v["real"]), ref_feats), 3),
    }
    if "reconstruction_adherence" in v:
        checks["reader_on_reconstructions"] = v["reconstruction_adherence"]
    by = {r["steps"]: r for r in rows}
    gaps = {}
    for k in (2, 4):  # the teacher rows at 4 and 8 calls
        g = adherence_gap(by[k]["adherence"], reference["adherence"], n)
        gaps[str(k)] = {"minus_reference": g["lora_minus_teacher"], "of": n, "p": g["p"]}
    return {
        "reference": reference,
        "rows": rows,
        "unguided": unguided,
        "checks": checks,
        "few_step_minus_reference": gaps,
        "traj_ratio_4_vs_25": round(by[4]["trajectory_error"] / by[25]["trajectory_error"], 2),
    }


def markdown(result: dict) -> str:
    out = [
        f"n = {result['samples']} samples (eval seed {EVAL_SEED}), cfg {result['cfg']:g}, teacher steps {result['teacher_steps']}\n"
    ]
    for name, r in result["variants"].items():
        ch = r["checks"]
        head = (
            f"### {name}\n\nreader on held-out real images {ch['reader_on_real']:.3f}"
            + (
                f", on the autoencoder's reconstructions {ch['reader_on_reconstructions']:.3f}"
                if "reader_on_reconstructions" in ch
                else ""
            )
            + f"; Fréchet real → reference {ch['frechet_real_to_reference']:.2f}; trained in {r['train_seconds']:.0f} s\n\n"
        )
        rows = [
            [x["name"], x["calls"], x["adherence"], x["frechet_teacher"], x["trajectory_error"]]
            for x in (r["reference"], *r["rows"], r["unguided"])
        ]
        gaps = ", ".join(
            f"{int(k) * 2} calls ({k} steps) {g['minus_reference']:+d} (p={g['p']:.3f})"
            for k, g in r["few_step_minus_reference"].items()
        )
        out.append(
            head
            + markdown_table(["sampler", "calls", "adherence", "Fréchet → teacher 50", "traj. error"], rows)
            + f"\nFew-step adherence minus the reference's, in images of {result['samples']}: {gaps}. "
            f"Trajectory error 4 vs 25 steps: x{r['traj_ratio_4_vs_25']}.\n"
        )
    return "\n".join(out) + f"\nCommand: `{result['command']}`\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=2400, help="teacher optimizer steps (the committed teacher's 2400)")
    ap.add_argument("--ae-steps", type=int, default=3000, help="autoencoder optimizer steps (latent)")
    ap.add_argument("--per-digit", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "teacher_variants_embedded.json"))
    a = ap.parse_args(argv)
    try:
        names = parse_variants(a.variants)
        for flag, value in (("--steps", a.steps), ("--ae-steps", a.ae_steps), ("--per-digit", a.per_digit)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if not 1 < a.cfg <= 30:
            raise ValueError(f"--cfg must be in (1, 30], got {a.cfg:g}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(a.threads)
    command = "python -m benchmarks.teacher_variants_embedded " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "machine": machine_info(),
        "samples": 10 * a.per_digit,
        "cfg": a.cfg,
        "teacher_steps": a.steps,
        "variants": {},
        "command": command.strip(),
    }
    for name in names:
        print(f"{name}: building the teacher", flush=True)
        v = build_variant(name, a.steps, a.ae_steps, a.seed)
        r = measure(v, a.per_digit, a.cfg)
        result["variants"][name] = {"train_seconds": v["train_seconds"], **r}
    write_results(a.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
