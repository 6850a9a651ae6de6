"""Experiment logging through accelerate's trackers: TensorBoard by default (``<output>/tensorboard``),
Weights & Biases or MLflow when installed and asked for (``log_with: [tensorboard, wandb]``)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path


def trackers(names: list[str], output: Path) -> list:
    """What to give ``Accelerator(log_with=...)``: installed trackers among ``names``. A missing
    W&B or MLflow is an error (it was asked for); a missing TensorBoard, the default, a warning."""
    from accelerate.tracking import TensorBoardTracker

    out = []
    for name in names:
        if importlib.util.find_spec(name) is None:
            if name == "tensorboard":
                logging.warning("tensorboard is not installed: no training logs (pip install tensorboard)")
                continue
            raise ImportError(f"log_with={name} needs the {name} package: pip install {name}, or drop it from log_with")
        # TensorBoard as an instance so its events land in <output>/tensorboard, as before
        out.append(TensorBoardTracker("tensorboard", str(output)) if name == "tensorboard" else name)
    return out


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config as the flat str/int/float/bool values trackers store as hyperparameters."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (str, int, float, bool)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def log_image(accelerator, tag: str, image, step: int) -> None:
    """An HWC uint8 image to every tracker that takes images."""
    import numpy as np

    img = np.asarray(image)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, img, step, dataformats="HWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: [img]}, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_image(img, f"{tag}/step_{step:06d}.png")
