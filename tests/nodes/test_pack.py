"""The pack loads through ComfyUI's own custom-node loader as a V3 extension and registers exactly
our nodes, each with tooltips, a HyperSD id and a HyperSD/ category."""

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE_IDS = {
    "HyperSDLoraLoader",
    "HyperSDLoraLoaderModelOnly",
    "HyperSDTSCDSampler",
    "HyperSDScheduler",
    "HyperSDDMDSampler",
    "HyperSDOneStepScheduler",
}


def pack_module(comfyui):
    return sys.modules[str(comfyui.pack).replace(".", "_x_")]


def expected_ids(comfyui):
    ids = set(CORE_IDS)
    if (REPO / "nodes" / "realtime.py").exists():
        realtime = sys.modules.get(pack_module(comfyui).__name__ + ".nodes.realtime")
        ids |= {n.GET_SCHEMA().node_id for n in getattr(realtime, "NODES", [])}
    return ids


def test_pack_registers_exactly_our_nodes_through_the_v3_entrypoint(comfyui):
    assert comfyui.loaded
    assert set(comfyui.pack_ids) == expected_ids(comfyui)
    module = pack_module(comfyui)
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # it would shadow comfy_entrypoint
    assert importlib.util.find_spec("comfy_api.v0_0_2") is not None
    compat = sys.modules[module.__name__ + ".nodes.compat"]
    from comfy_api import v0_0_2

    assert compat.io is v0_0_2.io and compat.ComfyExtension is v0_0_2.ComfyExtension


def test_every_node_has_tooltips_ids_and_categories(comfyui):
    for node_id in comfyui.pack_ids:
        cls = comfyui.nodes.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("HyperSD") and schema.category.startswith("HyperSD/")
        assert schema.description and schema.display_name
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
        info = cls.GET_NODE_INFO_V1()  # what /object_info serves to the frontend
        assert info["name"] == node_id and info["category"] == schema.category


def test_importing_the_pack_is_light():
    """The root module and the node modules import nothing heavy (no torch, no ComfyUI) at import time."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hypersd_pack', {str(REPO / '__init__.py')!r},"
        f" submodule_search_locations=[{str(REPO)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['hypersd_pack'] = m; spec.loader.exec_module(m)\n"
        "assert callable(m.comfy_entrypoint)\n"
        "heavy = [k for k in ('torch', 'comfy', 'numpy', 'safetensors') if k in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_broken_optional_group_only_warns(comfyui, monkeypatch, caplog):
    extension = sys.modules[pack_module(comfyui).__name__ + ".nodes.extension"]
    assert extension._optional_nodes("no_such_group") == []

    def broken(name, package=None):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(extension.importlib, "import_module", broken)
    with caplog.at_level(logging.WARNING):
        assert extension._optional_nodes("realtime") == []
    assert "realtime nodes disabled" in caplog.text and "simulated failure" in caplog.text
