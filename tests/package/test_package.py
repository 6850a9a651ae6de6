"""The pack as the Comfy Registry and ComfyUI-Manager see it: pyproject fields, LICENSE, the node
archive `comfy node pack` / `comfy node publish` build (git-tracked files minus .comfyignore),
that archive loading in the vendored ComfyUI, `comfy node validate`, and workflows that name the
pack (cnr_id / ver) so Manager can offer to install it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NAME, VERSION = PYPROJECT["project"]["name"], PYPROJECT["project"]["version"]
ARCHIVE_TOP = {"__init__.py", "nodes", "hypersd_core", "web", "workflows", "README.md", "LICENSE", "pyproject.toml"}
ARCHIVE_MAX_BYTES = 1_500_000
CORE_IDS = {
    "HyperSDLoraLoader",
    "HyperSDLoraLoaderModelOnly",
    "HyperSDTSCDSampler",
    "HyperSDScheduler",
    "HyperSDDMDSampler",
    "HyperSDOneStepScheduler",
}


def test_registry_fields():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # docs.comfy.org/registry/specifications: < 100 chars, alphanumerics and - _ ., no doubled
    # special characters, starts with a letter; best practice: no "ComfyUI" in it.
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", NAME) and len(NAME) < 100
    assert "comfyui" not in NAME.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].startswith("https://")
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]
    assert "Operating System :: OS Independent" in project["classifiers"]


def test_manager_installs_nothing_comfyui_lacks():
    """Manager pip-installs [project] dependencies into ComfyUI's environment: no torch there."""
    deps = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    comfy_requirements = {"numpy", "safetensors", "torch", "pillow", "pyyaml"}  # a few of what ComfyUI ships
    assert deps <= comfy_requirements - {"torch"}, deps
    assert not (REPO / "requirements.txt").exists()  # Manager would pip-install it too
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["train"]) and any(d.startswith("torch") for d in extras["torch"])


def test_license_file_is_the_declared_license():
    assert PYPROJECT["project"]["license"] == {"file": "LICENSE"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text, not a stub
    assert "License :: OSI Approved :: Apache Software License" in PYPROJECT["project"]["classifiers"]


@pytest.fixture(scope="module")
def node_archive(tmp_path_factory):
    """The zip `comfy node pack` builds, made by comfy-cli's own zip_files in this checkout."""
    file_utils = pytest.importorskip("comfy_cli.file_utils", reason="pip install comfy-cli (in the test extras)")
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True)
    if tracked.returncode != 0 or not tracked.stdout.strip():
        pytest.skip("not a git checkout: the registry archives git-tracked files only")
    path = tmp_path_factory.mktemp("archive") / "node.zip"
    cwd = os.getcwd()
    os.chdir(REPO)  # zip_files reads .comfyignore and `git ls-files` from the working directory
    try:
        includes = PYPROJECT["tool"]["comfy"].get("includes", [])
        file_utils.zip_files(str(path), includes=includes)
    finally:
        os.chdir(cwd)
    return path


def test_archive_holds_the_pack_and_nothing_else(node_archive):
    names = zipfile.ZipFile(node_archive).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == ARCHIVE_TOP, top ^ ARCHIVE_TOP
    assert not [n for n in names if n.endswith((".pyc", ".pt", ".ckpt", ".bin"))]
    size = node_archive.stat().st_size
    assert size < ARCHIVE_MAX_BYTES, f"node archive is {size} bytes"
    workflows = {Path(n).name for n in names if n.startswith("workflows/")}
    for wf in (REPO / "workflows").glob("*.json"):
        assert wf.name in workflows
    print(f"node archive: {len(names)} files, {size / 1e3:.0f} kB")


def test_archive_loads_in_comfyui(node_archive, tmp_path):
    """Unpacked into a custom_nodes folder as `comfy node install` would, the pack registers its
    nodes in the vendored ComfyUI, ComfyUI parses its pyproject, and its math runs."""
    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI tree to load the archive")
    target = tmp_path / "custom_nodes" / NAME
    zipfile.ZipFile(node_archive).extractall(target)
    proc = subprocess.run(
        [sys.executable, str(HERE / "load_pack.py"), str(target)],
        cwd=comfy_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Unable to parse pyproject.toml" not in proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] and CORE_IDS <= set(report["ids"])
    assert (report["name"], report["version"]) == (NAME, VERSION)
    assert report["publisher"] == PYPROJECT["tool"]["comfy"]["PublisherId"]
    # 4 tcd steps on SD1.5: t = 999, 759, 499, 259 -> sigma(t), then 0
    assert (
        report["sigmas"][0] == pytest.approx(14.6146, abs=1e-3)
        and report["sigmas"][-1] == 0
        and len(report["sigmas"]) == 5
    )


def test_comfy_node_validate_passes(tmp_path):
    """`comfy node validate`: the registry's config parse plus its ruff security rules over the
    whole folder (S102 exec, S307 eval, E702 several statements on one line), here with no warning."""
    pytest.importorskip("comfy_cli", reason="pip install comfy-cli (in the test extras)")
    comfy = Path(sys.executable).with_name("comfy")
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.run(
        [str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "All validation checks passed" in out and "Security warnings" not in out and "Warning" not in out, out


def test_workflows_name_the_pack_for_manager():
    """Each of our nodes carries properties.cnr_id / ver as the frontend saves them; Manager reads
    them to offer installing the pack when a shared workflow's nodes are missing."""
    for path in sorted((REPO / "workflows").glob("*.json")):
        ours = [n for n in json.loads(path.read_text())["nodes"] if n["type"].startswith("HyperSD")]
        assert ours, path.name
        for node in ours:
            props = node["properties"]
            assert (props.get("cnr_id"), props.get("ver")) == (NAME, VERSION), f"{path.name} node {node['id']}"
