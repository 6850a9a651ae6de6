"""The whole tiny pipeline in-process: stages -> LoRA (kohya + diffusers) -> grid -> metrics, and
the exported files load in diffusers with the same effect as the trained adapter."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from hypersd_core.lora_formats import HyperSDMetadata, detect_format, load_lora


def test_outputs_written(tiny_run):
    trainer, results, out = tiny_run
    for name in ("hypersd_lora.safetensors", "samples.png", "metrics.json", "summary.json", "config.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "lora").glob("*.safetensors")) == [
        "stage1_tscd_k2.safetensors",
        "stage2_tscd_k1.safetensors",
    ]
    sd, header = load_lora(out / "hypersd_lora.safetensors")
    assert detect_format(sd) == "kohya"
    downs = [k for k in sd if k.endswith(".lora_down.weight")]
    assert downs and all(k.replace(".lora_down.weight", ".alpha") in sd for k in downs)
    md = HyperSDMetadata.from_header(header)
    assert md.base_model == "tiny-test" and md.segments == 1 and md.steps == [1, 2] and md.stage == "tscd"
    assert md.extra["segments_schedule"] == [2, 1] and md.extra["solver_steps"] == 8
    _, stage1 = load_lora(out / "lora" / "stage1_tscd_k2.safetensors")
    md1 = HyperSDMetadata.from_header(stage1)
    assert md1.segments == 2 and md1.steps == [2]
    grid = Image.open(out / "samples.png")
    assert grid.size[1] > 3 * 8  # teacher row + student rows
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["rows"]) == {
        "teacher DDIM 4 cfg 3",
        "teacher DDIM 1 cfg 3",
        "teacher DDIM 2 cfg 3",
        "teacher DDIM 3 cfg 3",
        "teacher DDIM 1 cfg 1",
        "teacher DDIM 2 cfg 1",
        "student 1",
        "student 2",
        "stage k=2 LoRA 2",
    }
    for row in metrics["rows"].values():
        assert {"frechet", "frechet_teacher", "adherence", "adherence_reward", "trajectory_error", "nfe"} <= set(row)
        assert 0.0 <= row["adherence"] <= 1.0 and row["frechet"] >= 0
    ref = metrics["rows"]["teacher DDIM 4 cfg 3"]
    assert ref["trajectory_error"] == 0.0 and abs(ref["frechet_teacher"]) < 1e-6  # it is the reference
    assert metrics["rows"]["teacher DDIM 2 cfg 3"]["nfe"] == 4 and metrics["rows"]["teacher DDIM 2 cfg 1"]["nfe"] == 2
    # equal model calls: 1 call = teacher 1 step cfg 1, 2 calls = teacher 1 step at cfg 3
    pairs = {(c["lora"], c["teacher"]) for c in metrics["equal_calls"].values()}
    assert pairs == {
        ("student 1", "teacher DDIM 1 cfg 1"),
        ("student 2", "teacher DDIM 1 cfg 3"),
        ("stage k=2 LoRA 2", "teacher DDIM 1 cfg 3"),
    }
    assert metrics["verdict"].startswith("Verdict at equal model calls")
    assert all("teacher_steps_to_match" in metrics["rows"][n] for n in ("student 1", "student 2", "stage k=2 LoRA 2"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_training_changed_the_lora_and_loss_is_finite(tiny_run):
    trainer, _, out = tiny_run
    sd, _ = load_lora(out / "hypersd_lora.safetensors")
    ups = [v for k, v in sd.items() if k.endswith("lora_up.weight")]
    assert all(torch.isfinite(v).all() for v in sd.values())
    assert sum(float(v.abs().sum()) for v in ups) > 0  # lora_B starts at zero; training moved it


def _tiny_pipeline(tokenizer_path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    from train.config import ModelConfig
    from hypersd_models.loading import load_model

    m = load_model(ModelConfig(kind="tiny", tokenizer_path=str(tokenizer_path)))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=1,
        block_out_channels=(8,),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=m.text_encoders[0],
        tokenizer=m.tokenizers[0],
        unet=m.unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.mark.parametrize("which", ["kohya", "diffusers"])
def test_export_loads_in_diffusers(tiny_run, tokenizer_path, which):
    trainer, results, out = tiny_run
    pipe = _tiny_pipeline(tokenizer_path)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 8, 8, generator=gen), torch.tensor([999, 500, 20])
    c = torch.randn(3, 77, 16, generator=gen)
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=c).sample
        trained = trainer.base_unet(x, t, encoder_hidden_states=c).sample
    assert (trained - base).abs().max() > 1e-4  # the LoRA does something
    path = results["lora"][which]
    pipe.load_lora_weights(path, adapter_name="hyper")
    n_loaded = sum(1 for n, _ in pipe.unet.named_parameters() if "lora_A.hyper" in n)
    n_trained = sum(1 for n, _ in trainer.base_unet.named_parameters() if "lora_A.default" in n)
    assert n_loaded == n_trained
    with torch.no_grad():
        loaded = pipe.unet(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)


def _content(path):
    """A .safetensors file as (header, tensor bytes). safetensors writes the header's keys in a random
    order on every save, so two writes of the same LoRA differ as bytes only there."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_export_lora_writes_what_the_trainer_wrote(tiny_run, tmp_path):
    """export_lora + lora_metadata, without a trainer, write the run's final LoRA files again."""
    from train.export import export_lora, lora_metadata
    from train.stages import get_stage

    trainer, results, _ = tiny_run
    cfg, last = trainer.cfg, len(trainer.cfg.stages) - 1
    stage = get_stage(cfg.stages[last].name)(None, cfg.stages[last], last)  # metadata() reads only its config
    metadata = lora_metadata(cfg, stage.metadata(), trainer.model.base_model, trainer.model.prediction_type)
    paths = export_lora(
        trainer.base_unet,
        tmp_path,
        "hypersd_lora",
        metadata,
        cfg.export,
        cfg.data.resolution or trainer.model.resolution,
    )
    for kind in ("kohya", "diffusers"):
        assert Path(paths[kind]).name == Path(results["lora"][kind]).name
        assert _content(paths[kind]) == _content(results["lora"][kind]), kind


def test_init_from_exported_lora_round_trips(tiny_run, tmp_path, tokenizer_path):
    """A run started from an exported kohya LoRA (no training steps) exports the same weights."""
    from train.config import load_config
    from train.trainer import Trainer

    _, results, _ = tiny_run
    cfg = load_config(
        "tiny-test",
        overrides=[
            f"output={tmp_path}",
            f"model.tokenizer_path={tokenizer_path}",
            f"lora.init_from={results['lora']['kohya']}",
            "stage_all.steps=0",
            "eval.enabled=false",
            "sample.steps=[1]",
            "export.dtype=fp32",
        ],
    )
    again = Trainer(cfg).run()
    a, _ = load_lora(results["lora"]["kohya"])
    b, _ = load_lora(again["lora"]["kohya"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k])


@pytest.mark.parametrize("extra", [["grad_accum=2"], ["mixed_precision=bf16"]])
def test_accumulation_and_mixed_precision_run(tmp_path, tokenizer_path, extra):
    """Gradient accumulation (optimizer steps count, not micro-batches) and bf16 autocast on the CPU."""
    from accelerate.state import AcceleratorState

    from train.config import load_config
    from train.trainer import Trainer

    cfg = load_config(
        "tiny-test",
        overrides=[
            f"output={tmp_path}",
            f"model.tokenizer_path={tokenizer_path}",
            "stage_all.steps=2",
            "eval.enabled=false",
            "sample.steps=[1]",
            *extra,
        ],
    )
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process
    try:
        results = Trainer(cfg).run()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    last = sorted((tmp_path / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert last.name == "step-4"  # 2 stages x 2 optimizer steps
    sd, _ = load_lora(results["lora"]["kohya"])
    assert all(torch.isfinite(v).all() for v in sd.values())
