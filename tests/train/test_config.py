"""Config files over typed defaults, overrides, clear errors, and the pluggable stage registry."""

import json

import pytest

from train.cli import main
from train.config import ConfigError, TrainConfig, load_config, preset_names
from train.stages import Stage, get_stage, register_stage


def test_presets_load_and_validate():
    assert {"embedded", "sd15", "sdxl", "tiny-test"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig) and cfg.stages
        assert all(cfg.solver_steps % s.segments == 0 for s in cfg.stages)
    emb = load_config("embedded")
    assert [s.segments for s in emb.stages] == [8, 4, 2, 1]
    # Adversarial weight rises and consistency weight falls across the stages.
    assert [s.adv_weight for s in emb.stages] == sorted(s.adv_weight for s in emb.stages)
    assert [s.consistency_weight for s in emb.stages] == sorted(
        (s.consistency_weight for s in emb.stages), reverse=True
    )


def test_files_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  batch_size: 3\noptim:\n  lr: 0.5\n")
    cfg = load_config("tiny-test", [str(f)], ["optim.lr=0.25", "stage_all.steps=9", "sample.steps=[1, 4]"])
    assert cfg.data.batch_size == 3 and cfg.optim.lr == 0.25 and cfg.sample.steps == [1, 4]
    assert [s.steps for s in cfg.stages] == [9, 9] and cfg.model.kind == "tiny"
    j = tmp_path / "stages.json"
    j.write_text(json.dumps({"stages": [{"name": "tscd", "segments": 4, "steps": 2}]}))
    assert [s.segments for s in load_config("tiny-test", [str(j)], ["solver_steps=8"]).stages] == [4]


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.nope=1", "unknown key"),
        ("solver_steps=50", "not divisible"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("mixed_precision=yes", "mixed_precision"),
        ("optim.name=sgd", "optim.name"),
        ("data.batch_size=many", "expected an integer"),
        ("stage_all.loss=l1", "huber"),
        ("noequals", "key=value"),
        ("export.onestep_timestep=1000", "onestep_timestep must be in"),
        ("export.onestep_timestep=0", "onestep_timestep must be in"),
    ],
)
def test_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("embedded", overrides=[override])


def test_cli_errors_and_print(capsys, tmp_path):
    assert main(["--preset", "missing"]) == 2
    assert "available" in capsys.readouterr().err
    assert main(["--preset", "tiny-test", "--print-config", "--output", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == str(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(None, [str(tmp_path / "none.yaml")])


def test_stage_registry_and_plugins():
    assert get_stage("tscd").stage_name == "tscd"
    with pytest.raises(KeyError, match="known stages"):
        get_stage("no-such-stage")

    @register_stage("test-noop")
    class Noop(Stage):
        def train_step(self, batch, step):
            return {"loss": 0.0}

    assert get_stage("test-noop") is Noop
    with pytest.raises(ValueError, match="already registered"):
        register_stage("test-noop")(type("Other", (Stage,), {}))


def test_the_final_lora_carries_export_onestep_timestep_and_a_dmd_stage_keeps_its_own():
    from train.export import lora_metadata, onestep_timestep

    cfg = load_config("embedded")
    assert cfg.export.onestep_timestep == 800  # the embedded preset's final LoRA: one step at t=800
    tscd = {"segments": 1, "steps": [1]}
    assert onestep_timestep(cfg, tscd, last=True) == 800
    assert onestep_timestep(cfg, tscd, last=False) is None  # a stage's own LoRA: the TSCD sampler
    assert onestep_timestep(cfg, {**tscd, "onestep_timestep": 700}, last=True) == 700
    assert lora_metadata(cfg, tscd, "embedded-digits", "epsilon", last=True).onestep_timestep == 800
    assert lora_metadata(cfg, tscd, "embedded-digits", "epsilon", last=False).onestep_timestep is None
    for preset in ("sd15", "sdxl"):  # the SD presets' final LoRAs too (same scaled-linear schedule)
        assert load_config(preset).export.onestep_timestep == 800
    plain = load_config("embedded", overrides=["export.onestep_timestep=null"])
    assert onestep_timestep(plain, tscd, last=True) is None
