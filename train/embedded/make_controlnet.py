"""Train and save the embedded scribble ControlNet: a digit's strokes -> that digit.

    python -m train.embedded.make_controlnet [--out train/embedded/controlnet] [--steps 500] [--seed 0]

The ControlNet is diffusers' ``ControlNetModel.from_unet`` of the committed embedded teacher (its
encoder copied, zero-initialised outputs, a 1-channel conditioning input without downsampling),
trained with the teacher frozen on the teacher's own epsilon loss, the control image being the
digit's scribble (hypersd_models.controlnet.scribble: pixels above mid-grey; the threshold is
varied in training so thinner and thicker strokes both work). 10 % of the prompts are dropped, as
for the teacher, so classifier-free guidance works with control. Deterministic for a seed on one
machine (single thread); 500 steps took 20 min on one core of the shared 2-core CPU (load
6-8). Writes config.json +
diffusion_pytorch_model.safetensors (fp16, loadable by ``ControlNetModel.from_pretrained``) and
train_info.json with the held-out control agreement and adherence at DDIM 25, cfg 3.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hypersd_core.lora_formats import atomic_write_text
from hypersd_core.schedule import VPSchedule
from hypersd_models.controlnet import EMBEDDED_CONTROLNET_DIR, build_embedded_controlnet, scribble, stroke_iou
from hypersd_models.embedded import encode_prompts, load_embedded
from train.digits import load_digit_splits, random_captions
from train.embedded.make_embedded import caption_table, digit_batch, noised_batch, warmup_cosine
from train.metrics import digit_reader
from train.sampling import sample_images

THRESHOLD_JITTER = 0.3  # training scribbles use thresholds in [-0.3, 0.3]


def train_controlnet(teacher, train, seed: int, steps: int, batch: int = 64, lr: float = 1e-3, log_every: int = 100):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    unet = teacher.unet.float().eval().requires_grad_(False)
    net = build_embedded_controlnet(unet, seed).float().train()
    schedule = VPSchedule.scaled_linear()
    table = caption_table(teacher.text_encoder, teacher.tokenizer)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warm=50)
    t0 = time.time()
    for step in range(steps):
        idx, x0 = digit_batch(train, batch, gen)
        thr = (torch.rand((batch, 1, 1, 1), generator=gen) * 2 - 1) * THRESHOLD_JITTER
        control = (x0 > thr).float()
        emb, t, noise, x_t = noised_batch(x0, train.labels[idx], table, schedule, gen, rng)
        down, mid = net(x_t, t, encoder_hidden_states=emb, controlnet_cond=control, return_dict=False)
        pred = unet(
            x_t, t, encoder_hidden_states=emb, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"controlnet step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def control_scores(
    teacher, controlnet, test, n: int = 200, steps: int = 25, cfg: float = 3.0, seed: int = 1234
) -> dict:
    """Held-out digits' scribbles as control, their captions as prompts: mean stroke IoU between the
    scribble and the output's scribble, and the independent reader's adherence; with and without
    the ControlNet (same noise)."""
    idx = torch.arange(min(n, len(test.labels)))
    labels, ctrl = test.labels[idx], scribble(test.images[idx])
    cond = encode_prompts(teacher.text_encoder, teacher.tokenizer, random_captions(labels, random.Random(seed)))
    uncond = encode_prompts(teacher.text_encoder, teacher.tokenizer, [""]).expand_as(cond)
    noise = torch.randn(ctrl.shape, generator=torch.Generator().manual_seed(seed))
    reader = digit_reader(ctrl.shape[-1])
    out = {}
    for name, net in (("with_control", controlnet), ("without_control", None)):
        added = {"control_image": ctrl, "control_scale": torch.ones(len(idx))} if net is not None else None
        x = sample_images(
            teacher.unet,
            noise,
            cond,
            uncond,
            steps=steps,
            cfg=cfg,
            controlnet=net,
            added_cond=added,
            added_uncond=added,
        ).clamp(-1, 1)
        out[name] = {
            "control_iou": round(float(stroke_iou(scribble(x), ctrl).mean()), 4),
            "adherence": round(reader.adherence(x, labels), 4),
        }
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(EMBEDDED_CONTROLNET_DIR))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-samples", type=int, default=200)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    teacher = load_embedded()
    train, test = load_digit_splits(teacher.resolution)
    t0 = time.time()
    net = train_controlnet(teacher, train, args.seed, args.steps)
    seconds = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net.half().save_pretrained(out, safe_serialization=True)  # fp16 on disk, fp32 in use
    from hypersd_models.controlnet import load_controlnet

    net = load_controlnet(out, teacher.unet)  # score what was written
    scores = control_scores(teacher, net, test, n=args.eval_samples)
    info = {
        "steps": args.steps,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "scribble": "pixels above 0 (images in [-1, 1]); training thresholds jittered in [-0.3, 0.3]",
        "eval": f"{min(args.eval_samples, len(test.labels))} held-out digits, teacher DDIM 25 cfg 3, control strength 1",
        **scores,
    }
    atomic_write_text(out / "train_info.json", json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2), flush=True)


if __name__ == "__main__":
    main()
