"""A real ComfyUI, in-process, with this pack loaded through ComfyUI's own custom-node loader.

COMFYUI_PATH must point to a writable COPY of a ComfyUI tree (v0.8.0+) whose custom_nodes/
holds a link to this repository; .ci/run prepares one. Without it every test here skips.
"""

import asyncio
import functools
import os
import sys
import types
from pathlib import Path

import pytest

from hypersd_models.specs import COMFY_SD15, COMFY_SD15_TINY, COMFY_SDXL

REPO = Path(__file__).resolve().parents[2]


def _comfy_root() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip(
            "COMFYUI_PATH is unset: point it to a copy of ComfyUI with this repo linked into custom_nodes/ "
            "(cp -r ../shared/vendor/ComfyUI /tmp/c && ln -s $PWD /tmp/c/custom_nodes/hypersd)"
        )
    root = Path(path).resolve()
    if not (root / "nodes.py").is_file() or not (root / "comfy").is_dir():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI tree (no nodes.py / comfy/)")
    return root


def _pack_dir(root: Path) -> Path:
    for entry in sorted((root / "custom_nodes").iterdir()):
        if entry.is_dir() and entry.resolve() == REPO:
            return entry
    pytest.fail(f"{root}/custom_nodes holds no link to {REPO}: ln -s {REPO} {root}/custom_nodes/hypersd")


def _run_node(nodes, node_id, *args):
    """Run a node's function with positional inputs (V3 execute, or a V1 node's FUNCTION); its outputs."""
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "define_schema"):
        return cls.execute(*args).args
    return getattr(cls(), cls.FUNCTION)(*args)


@pytest.fixture(scope="session")
def comfyui():
    """ComfyUI's modules after init: built-in nodes, the extras, and our pack, CPU only.
    ``comfyui.run(node_id, *inputs)`` runs one node and returns its outputs."""
    root = _comfy_root()
    pack = _pack_dir(root)
    loaded = sys.modules.get("nodes")
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() != root / "nodes.py":
        pytest.fail(
            f"a module named 'nodes' ({loaded}) was imported before ComfyUI's; run these tests in their own process"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import utils.install_util  # noqa: F401  (ComfyUI's utils package, before comfy/utils.py can shadow it)
    import folder_paths
    import nodes

    if "SamplerCustom" not in nodes.NODE_CLASS_MAPPINGS:  # another test module may have initialised ComfyUI
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    ok = asyncio.run(nodes.load_custom_node(str(pack)))
    module = f"custom_nodes.{pack.name}"
    return types.SimpleNamespace(
        root=root,
        pack=pack,
        nodes=nodes,
        folder_paths=folder_paths,
        loaded=ok,
        pack_ids=sorted(
            k for k, c in nodes.NODE_CLASS_MAPPINGS.items() if getattr(c, "RELATIVE_PYTHON_MODULE", None) == module
        ),
        run=functools.partial(_run_node, nodes),
    )


def _patcher(model_config, device):
    import comfy.model_patcher
    import torch

    cpu = torch.device("cpu")
    with torch.device(device):
        model = model_config.get_model({}, device=device)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _meta_clip(model_config):
    """The model's real CLIP class, built on the meta device (key maps and patches, no weights)."""
    import comfy.sd
    import torch

    cpu = torch.device("cpu")
    options = {
        "initial_device": torch.device("meta"),
        "load_device": cpu,
        "offload_device": cpu,
        "dtype": torch.float32,
    }
    return comfy.sd.CLIP(model_config.clip_target(), model_options=options)


@pytest.fixture(scope="session")
def sd15_meta(comfyui):
    """(MODEL, CLIP) of full-size SD1.5 architecture on the meta device: real key maps, no memory."""
    import comfy.supported_models as sm

    config = sm.SD15(dict(COMFY_SD15))
    return _patcher(config, "meta"), _meta_clip(config)


@pytest.fixture(scope="session")
def sdxl_meta(comfyui):
    import comfy.supported_models as sm

    config = sm.SDXL(dict(COMFY_SDXL))
    return _patcher(config, "meta"), _meta_clip(config)


@pytest.fixture(scope="session")
def tiny_model(comfyui):
    """A tiny SD1.5-style MODEL with seeded random weights, on the CPU."""
    import comfy.supported_models as sm
    import torch

    patcher = _patcher(sm.SD15(dict(COMFY_SD15_TINY)), "cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in patcher.model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return patcher


@pytest.fixture(scope="session")
def loras_dir(comfyui, tmp_path_factory):
    """A folder registered as ComfyUI's models/loras for this session."""
    path = tmp_path_factory.mktemp("loras")
    comfyui.folder_paths.add_model_folder_path("loras", str(path), is_default=True)
    return path


# ComfyUI's configs for the full-size flow-matching models, as its model detection describes the
# FLUX.1-dev and SD3-medium checkpoints (comfy/model_detection.py).
COMFY_FLUX_DEV = {
    "image_model": "flux",
    "axes_dim": [16, 56, 56],
    "num_heads": 24,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "out_channels": 16,
    "qkv_bias": True,
    "txt_ids_dims": [],
    "in_channels": 16,
    "hidden_size": 3072,
    "context_in_dim": 4096,
    "patch_size": 2,
    "vec_in_dim": 768,
    "depth": 19,
    "depth_single_blocks": 38,
    "guidance_embed": True,
}
COMFY_SD3_MEDIUM = {
    "in_channels": 16,
    "patch_size": 2,
    "out_channels": 16,
    "depth": 24,
    "input_size": None,
    "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
    "num_patches": 36864,
    "pos_embed_max_size": 192,
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [],
}


@pytest.fixture(scope="session")
def flux_meta(comfyui):
    """MODEL of full-size FLUX.1-dev architecture on the meta device (ComfyUI's own classes)."""
    import comfy.supported_models as sm

    return _patcher(sm.Flux(dict(COMFY_FLUX_DEV)), "meta")


@pytest.fixture(scope="session")
def sd3_meta(comfyui):
    import comfy.supported_models as sm

    return _patcher(sm.SD3(dict(COMFY_SD3_MEDIUM)), "meta")
