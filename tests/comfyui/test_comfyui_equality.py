"""ComfyUI through our nodes == the hypersd_core reference == diffusers, for one real run.

The server run: CheckpointLoaderSimple -> HyperSDLoraLoader (unified 1-step LoRA) -> SamplerCustom
(cfg 1, HyperSDTSCDSampler eta 0.3, HyperSDScheduler 'tcd', 2 steps) -> SaveLatent. The
references (reference_tscd.py, in a subprocess with the same ComfyUI tree) start from the same
seeded noise and draw the same seeded per-step noise:
- core: hypersd_core.sample_tscd on D(x, sigma) = ComfyUI's own model.apply_model, so the
  difference measures only our nodes' plumbing (sigmas, eta, seed, start-noise scaling);
- diffusers: diffusers' UNet2DConditionModel with the same weights (LoRA merged) stepped by
  TCDScheduler; the difference adds two UNet implementations and two LoRA paths.
Both compare the final predicted x0 (ComfyUI's schedule ends at sigma 0), in fp32.
"""

import json

import pytest
import torch

from comfy_server import HERE, REPO, run_in_comfy
from prompts import IMAGE_SIZE, POSITIVE, read_latent, saved_files, txt2img
from sd15_models import CHECKPOINT

pytestmark = pytest.mark.comfyui

LORA = "Hyper-SD15-1step-lora.safetensors"
RUN = dict(strength=1.0, steps=2, spacing="tcd", eta=0.3, seed=2024)


@pytest.fixture(scope="module")
def server_latent(comfy):
    prompt = txt2img(
        CHECKPOINT,
        LORA,
        RUN["strength"],
        RUN["steps"],
        RUN["spacing"],
        RUN["eta"],
        RUN["seed"],
        IMAGE_SIZE,
        prefix="equality",
    )
    return read_latent(saved_files(comfy, comfy.run(prompt), "latents")[0])


@pytest.fixture(scope="module")
def references(comfy_path, sd15_files, tmp_path_factory):
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("reference")
    job = dict(
        RUN,
        repo=str(REPO),
        checkpoint=str(sd15_files["checkpoint"]),
        lora=str(sd15_files[LORA]),
        prompt=POSITIVE,
        size=IMAGE_SIZE,
        unet=str(sd15_files["unet"]),
        text_encoder=str(sd15_files["text_encoder"]),
        out=str(folder / "reference.safetensors"),
    )
    (folder / "job.json").write_text(json.dumps(job))
    stdout = run_in_comfy(comfy_path, HERE / "reference_tscd.py", folder / "job.json")
    info = json.loads(stdout.strip().splitlines()[-1])
    return load_file(job["out"]), info


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_comfyui_equals_hypersd_core(references, server_latent):  # references first: less memory at once
    ref, _ = references
    core = ref["core"]
    assert server_latent.shape == core.shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert torch.isfinite(server_latent).all()
    diff, rel = (server_latent - core).abs().max().item(), _rel(server_latent, core)
    assert rel < 1e-5, f"ComfyUI vs hypersd_core: max abs diff {diff:.3g} (rel {rel:.3g})"


def test_comfyui_equals_diffusers_tcd(references, server_latent):
    ref, info = references
    dif = ref["diffusers"]
    diff = (server_latent - dif).abs().max().item()
    rel = _rel(server_latent, dif)
    # Same weights, two UNet implementations and two LoRA paths (fp32, CPU): float rounding only.
    assert rel < 1e-5, f"ComfyUI vs diffusers TCDScheduler: max abs diff {diff:.3g} (rel {rel:.3g}); {info}"
