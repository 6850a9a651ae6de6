"""Every recipe config committed under benchmarks/configs/ loads over the preset its header names
(a typo in a committed recipe would otherwise surface only in a 5-minute benchmark run)."""

from pathlib import Path

import pytest

from train.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_loads_over_its_preset(path):
    preset = "embedded-unified" if "embedded-unified" in path.read_text() else "embedded"
    cfg = load_config(preset=preset, files=[str(path)])
    assert cfg.stages, f"{path.name} has no stages"
    for s in cfg.stages:
        assert s.steps > 0 and s.segments >= 1
