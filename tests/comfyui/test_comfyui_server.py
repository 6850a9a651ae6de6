"""The pack loads in a real ComfyUI: imported without error, every Hyper-SD node registered."""

import re

import pytest

pytestmark = pytest.mark.comfyui

NODE_IDS = (
    "HyperSDLoraLoader",
    "HyperSDLoraLoaderModelOnly",
    "HyperSDTSCDSampler",
    "HyperSDScheduler",
    "HyperSDDMDSampler",
    "HyperSDOneStepScheduler",
)


def test_pack_imports_and_registers_nodes(comfy):
    log = comfy.log_text()
    assert not re.search(r"Cannot import .*hypersd", log), comfy.log_tail()
    assert re.search(r"seconds: \S*custom_nodes[/\\]hypersd\s*$", log, re.M), (
        "the pack is missing from ComfyUI's custom-node import list\n" + comfy.log_tail()
    )
    missing = [n for n in NODE_IDS if n not in comfy.object_info]
    assert not missing, f"nodes not registered: {missing}"
    for node_id in NODE_IDS:
        info = comfy.object_info[node_id]
        assert info["category"].startswith("HyperSD/"), (node_id, info["category"])
        assert info["python_module"].startswith("custom_nodes."), (node_id, info["python_module"])
