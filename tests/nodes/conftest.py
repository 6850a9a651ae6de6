"""A real ComfyUI, in-process, with this pack loaded through ComfyUI's own custom-node loader.

COMFYUI_PATH must point to a writable COPY of a ComfyUI tree (v0.8.0+) whose custom_nodes/
holds a link to this repository; .ci/run prepares one. Without it every test here skips.
"""

import asyncio
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _comfy_root() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH is unset: point it to a copy of ComfyUI with this repo linked into custom_nodes/ "
                    "(cp -r ../shared/vendor/ComfyUI /tmp/c && ln -s $PWD /tmp/c/custom_nodes/hypersd)")
    root = Path(path).resolve()
    if not (root / "nodes.py").is_file() or not (root / "comfy").is_dir():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI tree (no nodes.py / comfy/)")
    return root


def _pack_dir(root: Path) -> Path:
    for entry in sorted((root / "custom_nodes").iterdir()):
        if entry.is_dir() and entry.resolve() == REPO:
            return entry
    pytest.fail(f"{root}/custom_nodes holds no link to {REPO}: ln -s {REPO} {root}/custom_nodes/hypersd")


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's modules after init: built-in nodes, the extras, and our pack, CPU only."""
    root = _comfy_root()
    pack = _pack_dir(root)
    loaded = sys.modules.get("nodes")
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() != root / "nodes.py":
        pytest.fail(f"a module named 'nodes' ({loaded}) was imported before ComfyUI's; run these tests in their own process")
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import utils.install_util  # noqa: F401  (ComfyUI's utils package, before comfy/utils.py can shadow it)
    import folder_paths
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(str(pack)))
    return types.SimpleNamespace(
        root=root, pack=pack, nodes=nodes, folder_paths=folder_paths, loaded=ok,
        pack_ids=sorted(set(nodes.NODE_CLASS_MAPPINGS) - before),
    )
