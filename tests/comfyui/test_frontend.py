"""Every template opens in ComfyUI's real frontend (the comfyui-frontend-package ComfyUI pins,
served by the session's ComfyUI server) in headless Chromium: no missing node type, every node and
link where the file puts it, every widget value kept, the frontend's own prompt wired as the file
says; our web extension loads and migrates loader values saved before strength_mode existed.
Each template has its thumbnail beside it (made by tests/comfyui/frontend.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from frontend import CHROMEDRIVER, CHROMIUM, chromium, load_workflow, open_app

pytestmark = pytest.mark.comfyui
WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}


@pytest.fixture(scope="module")
def frontend(comfy):
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Chromium not installed (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    with chromium() as driver:
        log = open_app(driver, comfy.url)
        yield driver, log


def our_errors(entries):
    """Console errors of our extension or of the graph code (not the test server's missing files)."""
    return [
        e["message"]
        for e in entries
        if e["level"] == "SEVERE"
        and ("hypersd" in e["message"].lower() or "TypeError" in e["message"] or "ReferenceError" in e["message"])
        and "Failed to load resource" not in e["message"]
        and "Failed to fetch" not in e["message"]
    ]


def test_our_web_extension_loads(frontend):
    driver, log = frontend
    assert not our_errors(log), our_errors(log)
    names = driver.execute_script("return app.extensions.map(e => e.name)")
    assert "hypersd.LoraLoaderStrengthMode" in names


def same(a, b):
    return a == pytest.approx(b) if isinstance(a, float) or isinstance(b, float) else a == b


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_opens_in_the_frontend(frontend, path):
    driver, _ = frontend
    wf = json.loads(path.read_text())
    result = load_workflow(driver, wf)
    assert not result.get("error"), result.get("error")
    assert result["missing"] == [], f"node types the frontend lacks: {result['missing']}"
    got = {n["id"]: n for n in result["nodes"]}
    assert set(got) == {n["id"] for n in wf["nodes"]}
    assert not [n["type"] for n in result["nodes"] if n["errors"]]
    assert {tuple(link[:5]) for link in result["links"]} == {tuple(link[:5]) for link in wf["links"]}
    for node in wf["nodes"]:
        widgets = got[node["id"]]["widgets"]
        values = node["widgets_values"]
        assert len(widgets) >= len(values), f"{path.name} node {node['id']} ({node['type']}): widgets {widgets}"
        for w, v in zip(widgets, values):
            assert same(w["value"], v), (
                f"{path.name} node {node['id']} ({node['type']}) widget {w['name']}: {w['value']!r} != {v!r}"
            )
    # the prompt the frontend would queue: every runnable node, wired as the file's links say
    prompt = result["prompt"]
    runnable = {str(n["id"]): n for n in wf["nodes"] if n["type"] not in FRONTEND_ONLY and n["mode"] == 0}
    assert set(prompt) == set(runnable)
    links = {link[0]: link for link in wf["links"]}
    for nid, node in runnable.items():
        assert prompt[nid]["class_type"] == node["type"]
        for inp in node["inputs"]:
            if inp["link"] is not None:
                _, src, slot, *_ = links[inp["link"]]
                assert prompt[nid]["inputs"][inp["name"]] == [str(src), slot], f"{path.name} node {nid} {inp['name']}"
    assert not our_errors(driver.get_log("browser"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_has_a_thumbnail(path):
    jpg = path.with_suffix(".jpg")
    assert jpg.is_file(), f"no thumbnail {jpg.name}: python tests/comfyui/frontend.py --comfyui <ComfyUI>"
    data = jpg.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and 2_000 < len(data) < 100_000


def test_old_saved_loader_values_are_migrated(frontend):
    """A loader saved as [lora_name, strength_model, strength_clip] (-1 = recommended) opens with
    strength_mode set from it, so the workflow keeps its meaning."""
    driver, _ = frontend
    wf = json.loads((WORKFLOWS[0].parent / "hypersd_sd15_4step.json").read_text())
    for old_strength, mode, strength in ((-1.0, "recommended", 1.0), (0.7, "custom", 0.7)):
        old = copy.deepcopy(wf)
        loader = next(n for n in old["nodes"] if n["type"] == "HyperSDLoraLoader")
        loader["widgets_values"] = [loader["widgets_values"][0], old_strength, 1.0]
        result = load_workflow(driver, old)
        widgets = {
            w["name"]: w["value"] for w in next(n for n in result["nodes"] if n["id"] == loader["id"])["widgets"]
        }
        assert (widgets["strength_mode"], widgets["strength_model"]) == (mode, strength)
        inputs = result["prompt"][str(loader["id"])]["inputs"]
        assert (inputs["strength_mode"], inputs["strength_model"]) == (mode, strength)


def test_img2img_and_controlnet_images_exist_after_install(comfy_path):
    """Their Load Image node names ComfyUI's own input/example.png, which every install has."""
    for name in ("hypersd_sd15_img2img.json", "hypersd_sd15_controlnet.json"):
        wf = json.loads((WORKFLOWS[0].parent / name).read_text())
        images = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadImage"]
        assert images == ["example.png"]
        assert (comfy_path / "input" / images[0]).is_file()
        note = next(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "MarkdownNote")
        assert "input/example.png" in note
