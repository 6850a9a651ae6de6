"""Sample grids: the teacher at its step count and the student at 1/2/4/8 steps from the same
noise and prompts, as one PNG (rows = samplers) and as TensorBoard images."""

from __future__ import annotations

from pathlib import Path

import torch

from .sampling import sample_images


@torch.no_grad()
def generate(
    unet,
    conditioner,
    prompts,
    noise,
    *,
    steps: int,
    cfg: float,
    eta: float,
    schedule,
    prediction_type: str,
    decode=None,
    batch: int = 100,
    seed: int = 0,
    onestep_timestep: int | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] for ``prompts`` from unit-variance ``noise`` (one row per prompt).
    ``onestep_timestep``: the one-step (DMD) sampler at that timestep instead of ``steps`` TSCD steps."""
    outs = []
    for i in range(0, len(prompts), batch):
        cond, added = conditioner.encode(list(prompts[i : i + batch]))
        n = cond.shape[0]
        uncond, added_u = conditioner.uncond(n) if cfg != 1 else (None, None)
        x = sample_images(
            unet,
            noise[i : i + batch].to(cond.device),
            cond,
            uncond,
            steps=steps,
            cfg=cfg,
            eta=eta,
            schedule=schedule,
            prediction_type=prediction_type,
            seed=seed + i,
            onestep_timestep=onestep_timestep,
            added_cond=added,
            added_uncond=added_u,
        )
        outs.append((decode(x) if decode is not None else x).float().cpu())
    return torch.cat(outs).clamp(-1, 1)


def sample_grid_rows(
    unet,
    teacher_ctx,
    student_ctx,
    conditioner,
    prompts,
    noise,
    *,
    student_steps,
    teacher_steps: int,
    teacher_cfg: float,
    student_cfg: float,
    eta: float,
    schedule,
    prediction_type,
    decode=None,
    onestep_timestep: int | None = None,
) -> dict:
    """{label: images}: "teacher DDIM <n> cfg <w>" then "student <k> steps" rows; with
    ``onestep_timestep`` (a DMD stage's) the 1-step row uses the one-step sampler at that timestep."""
    rows = {}
    with teacher_ctx() as teacher:
        rows[f"teacher DDIM {teacher_steps} cfg {teacher_cfg:g}"] = generate(
            teacher,
            conditioner,
            prompts,
            noise,
            steps=teacher_steps,
            cfg=teacher_cfg,
            eta=0.0,
            schedule=schedule,
            prediction_type=prediction_type,
            decode=decode,
        )
    with student_ctx():
        for k in student_steps:
            onestep = onestep_timestep if k == 1 else None
            label = f"student {k} step{'s' if k > 1 else ''}" + (f" t={onestep}" if onestep is not None else "")
            rows[label] = generate(
                unet,
                conditioner,
                prompts,
                noise,
                steps=k,
                cfg=student_cfg,
                eta=eta,
                schedule=schedule,
                prediction_type=prediction_type,
                decode=decode,
                onestep_timestep=onestep,
            )
    return rows


def grid_image(rows: dict, scale: int = 4, pad: int = 2, label_width: int = 150):
    """A PIL image: one labelled row per entry of ``rows`` (images (n, c, h, w) in [-1, 1])."""
    from PIL import Image, ImageDraw

    first = next(iter(rows.values()))
    n, c, h, w = first.shape
    H, W = h * scale, w * scale
    img = Image.new("RGB", (label_width + n * (W + pad) + pad, len(rows) * (H + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, (label, ims) in enumerate(rows.items()):
        y = pad + r * (H + pad)
        draw.text((4, y + H // 2 - 6), label, fill=(0, 0, 0))
        for j in range(ims.shape[0]):
            x = ((ims[j].clamp(-1, 1) + 1) * 127.5).round().byte()
            x = x.repeat(3, 1, 1) if x.shape[0] == 1 else x[:3]
            tile = Image.fromarray(x.permute(1, 2, 0).numpy()).resize((W, H), Image.NEAREST)
            img.paste(tile, (label_width + pad + j * (W + pad), y))
    return img


def save_grid(rows: dict, path: str | Path) -> str:
    from hypersd_core.lora_formats import atomic_write

    img = grid_image(rows)
    atomic_write(str(path), lambda tmp: img.save(tmp, format="PNG"))
    return str(path)
