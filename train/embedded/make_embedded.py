"""Train and save the embedded default: digit classifier, then the pixel-space digit teacher.

    python -m train.embedded.make_embedded [--out train/embedded] [--steps 2400] [--seed 0] [--data digits]
    python -m train.embedded.make_embedded --data polarity --steps 4800 --out train/embedded/polarity

Deterministic for a seed on one machine (single thread). Writes unet/ and text_encoder/ (fp16 on disk),
tokenizer/, classifier/ and meta.json, and prints the teacher's classifier accuracy at DDIM 25, cfg 3.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hypersd_core.lora_formats import atomic_write_text
from hypersd_core.parameterization import add_noise
from hypersd_core.schedule import VPSchedule
from train.digits import (
    LAYOUTS,
    all_captions,
    apply_layout,
    layout_held_out,
    load_digit_splits,
    random_captions,
    random_shift,
)
from hypersd_models.classifier import DigitClassifier
from hypersd_models.embedded import (
    EMBEDDED_DIR,
    RESOLUTION,
    TEXT_CONFIG,
    UNET_CONFIG,
    build_text_encoder,
    build_unet,
    encode_prompts,
    find_tokenizer,
    load_tokenizer,
)
from train.sampling import sample_images


def train_classifier(train, test, seed: int, epochs: int = 20, layout: str = "digits") -> tuple[DigitClassifier, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clf = DigitClassifier(RESOLUTION)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    n = len(train.labels)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(0, n, 64):
            idx = perm[b : b + 64]
            x = apply_layout(random_shift(train.images[idx], 1, gen), layout, gen)
            x = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
            loss = F.cross_entropy(clf(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval().requires_grad_(False)
    with torch.no_grad():
        acc = (clf(layout_held_out(test, layout)).argmax(1) == test.labels).float().mean().item()
    return clf, acc


def caption_table(text_encoder, tokenizer) -> dict:
    """{caption: its text embeddings} for every training caption and the empty prompt."""
    caps = [c for c, _ in all_captions()]
    return dict(zip(caps + [""], encode_prompts(text_encoder, tokenizer, caps + [""])))


def warmup_cosine(opt, steps: int, warm: int):
    """Linear warm-up over ``warm`` steps, then cosine decay to 10 % at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1)
    )


def digit_batch(train, batch: int, gen: torch.Generator, layout: str = "digits"):
    """(indices, images shifted by up to one pixel, drawn as ``layout``) of a random training batch."""
    idx = torch.randint(0, len(train.labels), (batch,), generator=gen)
    return idx, apply_layout(random_shift(train.images[idx], 1, gen), layout, gen)


def noised_batch(x0, labels, table: dict, schedule, gen: torch.Generator, rng: random.Random):
    """(text embeddings with 10 % of prompts dropped, timesteps, noise, noised images) for ``x0``."""
    prompts = [p if rng.random() >= 0.1 else "" for p in random_captions(labels, rng)]
    emb = torch.stack([table[p] for p in prompts])
    t = torch.randint(0, schedule.num_train_timesteps, (len(x0),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    alpha, sigma = schedule.alpha_sigma(t)
    return emb, t, noise, add_noise(x0, noise, alpha, sigma)


def train_teacher(
    train,
    text_encoder,
    tokenizer,
    seed: int,
    steps: int,
    batch: int = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.998,
    log_every: int = 200,
    build=build_unet,
    sample_batch=None,
):
    """The EMA of a UNet from ``build()`` trained on ``sample_batch(train, batch, gen)`` -> (indices,
    images): by default the digits shifted by up to a pixel (benchmarks vary both)."""
    sample_batch = sample_batch or digit_batch
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    unet = build()
    ema = copy.deepcopy(unet).requires_grad_(False)
    schedule = VPSchedule.scaled_linear()
    table = caption_table(text_encoder, tokenizer)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warm=100)
    t0 = time.time()
    for step in range(steps):
        idx, x0 = sample_batch(train, batch, gen)
        emb, t, noise, x_t = noised_batch(x0, train.labels[idx], table, schedule, gen, rng)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=emb).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        if step % log_every == 0 or step == steps - 1:
            print(f"teacher step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    return ema.eval()


@torch.no_grad()
def teacher_accuracy(
    unet, text_encoder, tokenizer, clf, per_digit: int = 20, steps: int = 25, cfg: float = 3.0, seed: int = 1234
) -> float:
    labels = torch.arange(10).repeat_interleave(per_digit)
    prompts = random_captions(labels, random.Random(seed))
    cond = encode_prompts(text_encoder, tokenizer, prompts)
    uncond = encode_prompts(text_encoder, tokenizer, [""]).expand_as(cond)
    noise = torch.randn((len(labels), 1, RESOLUTION, RESOLUTION), generator=torch.Generator().manual_seed(seed))
    x = sample_images(unet, noise, cond, uncond, steps=steps, cfg=cfg).clamp(-1, 1)
    return (clf(x).argmax(1) == labels).float().mean().item()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(EMBEDDED_DIR))
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--classifier-epochs", type=int, default=20)
    ap.add_argument(
        "--data",
        default="digits",
        choices=LAYOUTS,
        help="polarity: each digit black-on-white or white-on-black at random",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_digit_splits(RESOLUTION)

    clf, clf_acc = train_classifier(train, test, args.seed, epochs=args.classifier_epochs, layout=args.data)
    print(f"classifier held-out accuracy {clf_acc:.4f}", flush=True)
    clf.save(out / "classifier")

    tok_dir = find_tokenizer()
    if tok_dir.resolve() != (out / "tokenizer").resolve():
        shutil.copytree(tok_dir, out / "tokenizer", dirs_exist_ok=True, copy_function=shutil.copyfile)
        (out / "tokenizer").chmod(0o755)
    tokenizer = load_tokenizer(out / "tokenizer")
    # Stored in fp16 (a few MB); the teacher is trained on the fp16-rounded weights it will load.
    text_encoder = build_text_encoder(seed=args.seed).half().float()
    text_encoder.half().save_pretrained(out / "text_encoder", safe_serialization=True)
    text_encoder.float()

    sample_batch = functools.partial(digit_batch, layout=args.data)
    unet = train_teacher(train, text_encoder, tokenizer, args.seed, args.steps, sample_batch=sample_batch)
    unet.half().save_pretrained(out / "unet", safe_serialization=True)  # fp16 on disk, fp32 in use
    unet.float()
    acc = teacher_accuracy(unet, text_encoder, tokenizer, clf)
    meta = {
        "name": "embedded-digits" if args.data == "digits" else f"embedded-digits-{args.data}",
        "data": args.data,
        "resolution": RESOLUTION,
        "channels": 1,
        "prediction_type": "epsilon",
        "schedule": "scaled_linear",
        "pixel_space": True,
        "value_range": [-1, 1],
        "teacher_steps": args.steps,
        "seed": args.seed,
        "classifier_test_accuracy": round(clf_acc, 4),
        "teacher_ddim25_cfg3_accuracy": round(acc, 4),
        "recommended_cfg": 3.0,
        "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in UNET_CONFIG.items()},
        "text_config": TEXT_CONFIG,
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    print(f"teacher DDIM 25 steps cfg 3: classifier accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
