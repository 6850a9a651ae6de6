"""Session fixtures for the real-ComfyUI tests: the ComfyUI tree, the random SD1.5 model files
(cached across runs), a throwaway base folder, and one server for the whole session.

ComfyUI comes from COMFYUI_PATH (CI copies the vendored v0.8.0 tree there and links this repo
into its custom_nodes/). Locally:
    cp -r ../shared/vendor/ComfyUI /tmp/comfy_it && ln -s "$PWD" /tmp/comfy_it/custom_nodes/hypersd
    COMFYUI_PATH=/tmp/comfy_it python -m pytest -q tests/comfyui
Model files are cached under $HYPERSD_TEST_CACHE (default ~/.cache/hypersd-tests), keyed by
sd15_models.VERSION. The ComfyUI tree itself is only read: models, inputs, outputs and user
data live in a temp folder passed with --extra-model-paths-config and the directory flags.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import sd15_models  # noqa: E402
from prompts import IMAGE_SIZE, INPUT_IMAGE  # noqa: E402
from sd15_models import CHECKPOINT, CONTROLNET  # noqa: E402
from comfy_server import ComfyServer, run_in_comfy  # noqa: E402


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    raw = os.environ.get("COMFYUI_PATH")
    if not raw:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI v0.8.0+ tree to run the real-ComfyUI tests")
    path = Path(raw).resolve()
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        pytest.skip(f"COMFYUI_PATH={raw} is not a ComfyUI tree (no main.py / comfy/)")
    return path


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    root = Path(os.environ.get("HYPERSD_TEST_CACHE") or Path.home() / ".cache" / "hypersd-tests")
    path = root / sd15_models.VERSION
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(folder: Path):
    """One builder at a time per cache folder (parallel runs wait instead of racing)."""
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def sd15_files(comfy_path, cache_dir) -> dict[str, Path]:
    """The random SD1.5 components (diffusers layout), the LDM checkpoint and the LoRAs."""
    for module in ("diffusers", "transformers"):
        pytest.importorskip(
            module, reason=f"the random SD1.5 test models are built with {module}: pip install -e '.[train]'"
        )
    with _locked(cache_dir):
        components = {k: cache_dir / "components" / v for k, v in sd15_models.COMPONENT_FILES.items()}
        if not all(p.exists() for p in components.values()):
            components = sd15_models.build_components(cache_dir / "components")
        ckpt = cache_dir / CHECKPOINT
        if not ckpt.exists() or ckpt.stat().st_mtime < components["unet"].stat().st_mtime:
            run_in_comfy(comfy_path, HERE / "make_checkpoint.py", cache_dir / "components", ckpt)
        loras = {name: cache_dir / "loras" / name for name in sd15_models.LORA_FILES}
        if not all(p.exists() for p in loras.values()):
            loras = sd15_models.build_loras(cache_dir / "loras", components["unet"])
    return {**components, "checkpoint": ckpt, **loras}


def _controlnet_file(cache_dir: Path) -> Path:
    with _locked(cache_dir):
        path = cache_dir / CONTROLNET
        if not path.exists():
            sd15_models.build_controlnet(path)
    return path


def _pack_linked_in(comfy_path: Path) -> bool:
    folder = comfy_path / "custom_nodes"
    return folder.is_dir() and any(p.resolve() == REPO for p in folder.iterdir())


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory, comfy_path, sd15_files, cache_dir) -> dict[str, Path]:
    """A throwaway base: models/ (links to the cached files), input/, output/, temp/, user/."""
    base = tmp_path_factory.mktemp("comfy_base")
    dirs = {name: base / name for name in ("models", "input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    for sub in ("checkpoints", "loras", "controlnet"):
        (dirs["models"] / sub).mkdir()
    (dirs["models"] / "checkpoints" / CHECKPOINT).symlink_to(sd15_files["checkpoint"])
    for name in sd15_models.LORA_FILES:
        (dirs["models"] / "loras" / name).symlink_to(sd15_files[name])
    if any("ControlNet" in line for line in _workflow_node_types()):
        (dirs["models"] / "controlnet" / CONTROLNET).symlink_to(_controlnet_file(cache_dir))
    write_input_image(dirs["input"] / INPUT_IMAGE, IMAGE_SIZE)

    lines = [
        "hypersd_tests:",
        f"  base_path: {dirs['models']}",
        "  checkpoints: checkpoints",
        "  loras: loras",
        "  controlnet: controlnet",
    ]
    if not _pack_linked_in(comfy_path):
        # Not linked into the tree: offer it from a temp custom_nodes folder instead of writing there.
        nodes_dir = base / "custom_nodes"
        nodes_dir.mkdir()
        (nodes_dir / "hypersd").symlink_to(REPO, target_is_directory=True)
        lines.append(f"  custom_nodes: {nodes_dir}")
    dirs["extra_paths"] = base / "extra_model_paths.yaml"
    dirs["extra_paths"].write_text("\n".join(lines) + "\n")
    return dirs


def _workflow_node_types() -> set[str]:
    import json

    types = set()
    for path in (REPO / "workflows").glob("*.json"):
        types |= {n.get("type", "") for n in json.loads(path.read_text()).get("nodes", [])}
    return types


def write_input_image(path: Path, size: int) -> None:
    """A smooth colour gradient with a seeded speckle: a deterministic img2img / ControlNet input."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.stack([x, y, 1 - (x + y) / 2], -1) * 200 + rng.integers(0, 55, (size, size, 3))
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="session")
def comfy(comfy_path, comfy_dirs):
    """One real ComfyUI server for the whole session, stopped at the end."""
    server = ComfyServer(comfy_path, comfy_dirs, comfy_dirs["extra_paths"])
    server.start()
    yield server
    server.stop()
