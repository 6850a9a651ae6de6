"""A LoRA written by our trainer (the embedded default preset, a few steps per stage, in-process)
loads through HyperSDLoraLoader and samples through SamplerCustom + HyperSDTSCDSampler +
HyperSDScheduler to the same images the trainer's own grid shows, at 1, 2 and 4 steps.

ComfyUI has no model class for the embedded pixel-space UNet (1 channel, 16x16, GroupNorm(8):
its openaimodel UNet hard-codes 32 groups), so the ComfyUI MODEL here wraps the diffusers UNet
itself: a BaseModel with ``disable_unet_model_creation`` whose ``diffusion_model`` is the
diffusers module tree. ComfyUI's generic key map (``lora_unet_<module_path>``) then names every
exported kohya key, so the node's own path (metadata, key check, load_lora_for_models) runs
unchanged; everything after the MODEL object is ComfyUI's and ours.
"""

import pytest
import torch

STEPS = (1, 2, 4)
TRAIN_STEPS = 2  # per stage: enough for Adam to move lora_B (it starts at zero) without slowing CI


@pytest.fixture(scope="module")
def trained(comfyui, tmp_path_factory, tokenizer_path):
    """The embedded preset, shortened: 4 TSCD stages x TRAIN_STEPS steps, grid at 1/2/4 steps, no eval."""
    from train.config import load_config
    from train.trainer import Trainer

    out_dir = tmp_path_factory.mktemp("embedded_run")
    overrides = [
        f"output={out_dir}",
        f"model.tokenizer_path={tokenizer_path}",
        f"stage_all.steps={TRAIN_STEPS}",
        "data.batch_size=4",
        "threads=1",
        "progress=false",
        "checkpoint_every=0",
        "eval.enabled=false",
        f"sample.steps={list(STEPS)}",
        "sample.num=10",
        "sample.teacher_steps=2",
        "sample.seed=0",
    ]
    trainer = Trainer(load_config("embedded", overrides=overrides))
    results = trainer.run()
    return trainer, results


def comfy_embedded_model(comfyui):
    """A ComfyUI ModelPatcher around the committed embedded teacher's diffusers UNet (see module doc)."""
    import comfy.latent_formats
    import comfy.model_patcher
    import comfy.supported_models_base
    from diffusers import UNet2DConditionModel

    from hypersd_models.embedded import load_embedded

    class DiffusersUNet(UNet2DConditionModel):
        """The diffusers UNet under ComfyUI's diffusion_model call signature."""

        def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
            return super().forward(x, timesteps, encoder_hidden_states=context).sample

    class PixelLatent(comfy.latent_formats.LatentFormat):
        latent_channels = 1  # pixel space in [-1, 1]: scale_factor 1

    class EmbeddedDigits(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True, "in_channels": 1, "context_dim": 32}
        unet_extra_config = {}
        latent_format = PixelLatent  # sampling_settings {}: ComfyUI's default = SD1.5's scaled-linear eps

    teacher = load_embedded().unet
    net = DiffusersUNet.from_config(teacher.config)
    net.load_state_dict(teacher.state_dict())
    model = EmbeddedDigits(dict(EmbeddedDigits.unet_config)).get_model({}, device=torch.device("cpu"))
    model.diffusion_model = net.eval().requires_grad_(False)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="module")
def loaded(comfyui, trained, loras_dir):
    """(patched MODEL, settings text) from HyperSDLoraLoader at the recommended strength (-1)."""
    import shutil

    _, results = trained
    name = "hypersd_embedded_trained.safetensors"
    shutil.copy(results["lora"]["kohya"], loras_dir / name)
    model = comfy_embedded_model(comfyui)
    patched, _, settings = comfyui.run("HyperSDLoraLoader", model, None, name, -1.0, 1.0)
    return model, patched, settings


def comfy_sample(comfyui, model, cond, steps, seed, eta):
    (sampler,) = comfyui.run("HyperSDTSCDSampler", eta)
    (sigmas,) = comfyui.run("HyperSDScheduler", model, steps, "trailing", 1.0)
    latent = torch.zeros(cond.shape[0], 1, 16, 16)
    result, _ = comfyui.run(
        "SamplerCustom",
        model,
        True,
        seed,
        1.0,
        [[cond, {}]],
        [[cond[:1] * 0, {}]],
        sampler,
        sigmas,
        {"samples": latent},
    )
    return result["samples"]


def test_metadata_and_every_key(trained, loaded):
    from hypersd_core.lora_formats import HyperSDMetadata, load_lora

    trainer, results = trained
    base, patched, settings = loaded
    _, header = load_lora(results["lora"]["kohya"])
    md = HyperSDMetadata.from_header(header)
    assert md.base_model == "embedded-digits" and md.steps == [1, 2, 4, 8] and md.strength == 1.0
    assert settings.startswith("hypersd_embedded_trained.safetensors: embedded-digits, steps 1-8, spacing trailing")
    assert "strength 1" in settings, settings
    n_modules = sum(1 for n, _ in trainer.base_unet.named_modules() if n.endswith(".lora_A"))
    patched_keys = {k for k in patched.patches if k.startswith("diffusion_model.")}
    assert n_modules > 50 and len(patched_keys) == n_modules  # every exported module became a ComfyUI patch
    assert not base.patches  # the loader clones; the input MODEL is untouched


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_comfyui_equals_the_trainers_grid(comfyui, trained, loaded, eta):
    """Same LoRA, prompts, noise and seed: ComfyUI's images are the trainer's grid rows (1 step:
    the one-step sampler at the header's timestep, on both sides), and the digit classifier reads
    them identically."""
    from train.export import onestep_timestep
    from train.grids import generate
    from train.metrics import prompt_adherence

    trainer, _ = trained
    onestep = onestep_timestep(trainer.cfg, {})  # the final LoRA's header: 800 in the embedded preset
    assert onestep == 800
    _, patched, _ = loaded
    prompts = trainer.grid_prompts()
    labels = torch.arange(len(prompts)) % 10
    seed = trainer.cfg.sample.seed
    noise = torch.randn(
        len(prompts), 1, 16, 16, generator=torch.Generator().manual_seed(seed)
    )  # = the trainer's grid noise
    cond, _ = trainer.conditioner.encode(prompts)
    clf = trainer.model.extras["classifier"]
    m = trainer.model
    for steps in STEPS:
        ref = generate(
            trainer.base_unet,
            trainer.conditioner,
            prompts,
            noise,
            steps=steps,
            cfg=1.0,
            eta=eta,
            schedule=m.schedule,
            prediction_type=m.prediction_type,
            decode=trainer.decode,
            seed=seed,
            onestep_timestep=onestep if steps == 1 else None,  # as the trainer's grid and HyperSDScheduler
        )
        got = comfy_sample(comfyui, patched, cond, steps, seed, eta).clamp(-1, 1)
        diff = (got - ref).abs().max().item()
        assert diff < 1e-4, f"{steps} steps, eta {eta}: ComfyUI vs trainer max abs diff {diff:.3g}"
        with torch.no_grad():
            assert torch.equal(clf(got).argmax(1), clf(ref).argmax(1))
        assert prompt_adherence(clf, got, labels) >= prompt_adherence(clf, ref, labels)


def test_the_lora_acts_in_comfyui(comfyui, trained, loaded):
    """Strength 0 through the same node gives the teacher, which differs from the trained LoRA."""
    trainer, _ = trained
    base, patched, _ = loaded
    off, _, _ = comfyui.run("HyperSDLoraLoader", base, None, "hypersd_embedded_trained.safetensors", 0.0, 1.0)
    cond, _ = trainer.conditioner.encode(trainer.grid_prompts()[:4])
    on_img, off_img = comfy_sample(comfyui, patched, cond, 2, 0, 0.0), comfy_sample(comfyui, off, cond, 2, 0, 0.0)
    assert (on_img - off_img).abs().max().item() > 1e-3


def test_scheduler_at_one_step_uses_the_loras_onestep_timestep(comfyui, trained, loras_dir):
    """A LoRA whose header names a one-step timestep (our dmd/unified stages: 800) is sampled there
    by HyperSDScheduler at 1 step; other step counts and plain models keep the TSCD schedule."""
    import dataclasses

    from hypersd_core.lora_formats import HyperSDMetadata, load_lora, save_lora
    from hypersd_core.samplers import get_sigmas_onestep, get_sigmas_tscd
    from hypersd_core.schedule import VPSchedule

    _, results = trained
    sd, header = load_lora(results["lora"]["kohya"])
    md = dataclasses.replace(HyperSDMetadata.from_header(header), onestep_timestep=800)
    save_lora(loras_dir / "embedded_onestep800.safetensors", sd, md)
    model = comfy_embedded_model(comfyui)
    patched, _, settings = comfyui.run("HyperSDLoraLoader", model, None, "embedded_onestep800.safetensors", -1.0, 1.0)
    assert "timestep 800" in settings
    schedule = VPSchedule.scaled_linear()
    (one,) = comfyui.run("HyperSDScheduler", patched, 1, "trailing", 1.0)
    torch.testing.assert_close(one, get_sigmas_onestep(800, schedule), rtol=1e-5, atol=1e-6)
    (two,) = comfyui.run("HyperSDScheduler", patched, 2, "trailing", 1.0)
    torch.testing.assert_close(two, get_sigmas_tscd(2, schedule), rtol=1e-5, atol=1e-6)
    (plain,) = comfyui.run("HyperSDScheduler", model, 1, "trailing", 1.0)  # the input MODEL is untouched
    torch.testing.assert_close(plain, get_sigmas_tscd(1, schedule), rtol=1e-5, atol=1e-6)
