"""The real-time node inside a real ComfyUI (COMFYUI_PATH; skips without it), on the CPU:
a no-op with a clear message, and — forced onto the CPU compile path (dynamo, eager backend) — the same
samples as eager ComfyUI, with re-captures for a new resolution and a new LoRA strength."""

import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import torch

from hypersd_models.specs import COMFY_SD15_TINY

NODES_CONFTEST = Path(__file__).resolve().parents[1] / "nodes" / "conftest.py"


def _nodes_helpers():
    """Helper functions of tests/nodes/conftest.py (how the suite finds and loads ComfyUI)."""
    spec = importlib.util.spec_from_file_location("_hypersd_nodes_conftest_helpers", NODES_CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def comfy(tokenizer_path):
    """ComfyUI's modules with our pack loaded; reuses an initialised ComfyUI in this process."""
    helpers = _nodes_helpers()
    root = helpers._comfy_root()  # skips when COMFYUI_PATH is unset
    pack = helpers._pack_dir(root)
    loaded = sys.modules.get("nodes")
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() != root / "nodes.py":
        pytest.fail(f"a module named 'nodes' ({loaded}) was imported before ComfyUI's; run in its own process")
    if loaded is None:
        sys.path.insert(0, str(root))
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import utils.install_util  # noqa: F401
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    import nodes

    if "HyperSDRealtimeCompile" not in nodes.NODE_CLASS_MAPPINGS:
        assert asyncio.run(nodes.load_custom_node(str(pack)))
    cls = nodes.NODE_CLASS_MAPPINGS["HyperSDRealtimeCompile"]
    helpers.realtime = sys.modules[cls.__module__]
    helpers.node = cls
    return helpers


@pytest.fixture
def tiny_unet(comfy):
    import comfy.supported_models as sm

    patcher = comfy._patcher(sm.SD15(dict(COMFY_SD15_TINY)), "cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in patcher.model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return patcher


def _sample(model, size=32, seed=0):
    import comfy.sample

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=g)
    cond = [[torch.randn(1, 77, 32, generator=g), {}]]
    return comfy.sample.sample(
        model, noise, 2, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise), seed=seed, disable_pbar=True
    )


def test_node_is_registered_with_schema(comfy):
    schema = comfy.node.define_schema()
    names = [i.id for i in schema.inputs]
    assert names == ["model", "vae", "mode", "max_captures"] and len(schema.outputs) == 2


def test_on_cpu_passes_model_and_vae_through_with_message(comfy, tiny_unet, caplog):
    vae = object()
    with caplog.at_level(logging.WARNING):
        out = comfy.node.execute(tiny_unet, "reduce-overhead", 4, vae=vae).args
    assert out[0] is tiny_unet and out[1] is vae
    assert "CUDA graphs need a CUDA GPU" in caplog.text and "pass through unchanged" in caplog.text


def test_compiled_path_matches_eager_and_recaptures(comfy, tiny_unet):
    """Forced onto the CPU with dynamo (eager backend): same samples, a capture per resolution and LoRA strength."""
    m, _, msg = comfy.realtime.apply_realtime(tiny_unet, None, mode=None, max_captures=2, backend="eager")
    assert m is not tiny_unet and "compiling" in msg
    wrappers = m.wrappers["apply_model"]["hypersd.realtime"]
    guard = wrappers[0].__closure__[0].cell_contents
    torch.testing.assert_close(_sample(m), _sample(tiny_unet))
    assert len(guard.captures) == 1
    torch.testing.assert_close(_sample(m, size=48), _sample(tiny_unet, size=48))
    assert len(guard.captures) == 2 and guard.recaptures == 0
    key = "diffusion_model.input_blocks.0.0.weight"
    diff = torch.randn(tiny_unet.get_model_object(key).shape, generator=torch.Generator().manual_seed(5)) * 0.5
    results = {}
    for strength in (1.0, 0.5):
        lora_c, lora_e = m.clone(), tiny_unet.clone()
        for p in (lora_c, lora_e):
            p.add_patches({key: (diff,)}, strength)
        results[strength] = _sample(lora_c)
        torch.testing.assert_close(results[strength], _sample(lora_e))
        assert len(guard.captures) == 1, "a new LoRA strength must drop the old captures"
    assert not torch.allclose(results[1.0], results[0.5])
    assert guard.recaptures == 2 and guard.eager_calls == 0
    torch.testing.assert_close(_sample(m), _sample(tiny_unet))  # unpatched again: re-captured
    torch.testing.assert_close(_sample(m, size=48), _sample(tiny_unet, size=48))
    torch.testing.assert_close(_sample(m, size=64), _sample(tiny_unet, size=64))  # past the limit: eager
    assert guard.eager_calls == 2 and len(guard.captures) == 2
