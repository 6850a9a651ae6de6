"""ComfyUI's real frontend (the comfyui-frontend-package ComfyUI pins, served by a ComfyUI server)
driven by headless Chromium: load a UI workflow with app.loadGraphData, report what the frontend
made of it, screenshot the canvas.

As a script it writes the template thumbnails, workflows/<name>.jpg, from a fresh server:
    python tests/comfyui/frontend.py --comfyui /path/to/ComfyUI   (with this pack in its custom_nodes/)
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE.parent) not in sys.path:  # as a script: the shared browser helper in tests/
    sys.path.insert(0, str(HERE.parent))
from browser import CHROMEDRIVER, CHROMIUM, chromium  # noqa: E402,F401  (re-exported for test_frontend)

THUMBNAIL_WIDTH = 512

# What the frontend made of a workflow: node types it lacks, its graph (nodes, links, widget
# values), its own API prompt (graphToPrompt), and the node types it flags with errors.
LOAD_JS = """
const [wf, done] = arguments;
const missing = wf.nodes.map(n => n.type).filter(t => !LiteGraph.registered_node_types[t]);
app.loadGraphData(wf, true, true, null).then(async () => {
  const nodes = app.graph.nodes.map(n => ({id: n.id, type: n.type,
    widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value})),
    inputs: (n.inputs || []).map(i => ({name: i.name, link: i.link})), errors: !!n.has_errors}));
  const links = Object.values(app.graph.links || {}).filter(Boolean).map(l =>
    [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
  const prompt = (await app.graphToPrompt()).output;
  // fit every node into the canvas (screen = (pos + offset) * scale)
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const n of app.graph.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const c = app.canvas.canvas, pad = 40;
  const scale = Math.min(c.width / (x1 - x0 + 2 * pad), c.height / (y1 - y0 + 2 * pad));
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [c.width / scale / 2 - (x0 + x1) / 2, c.height / scale / 2 - (y0 + y1) / 2];
  app.graph.setDirtyCanvas(true, true);
  done({missing, nodes, links, prompt});
}).catch(e => done({error: String(e && e.stack || e)}));
"""


# No first-run templates browser and no missing-model dialog (the test server has none of the
# model files the templates name) over the canvas.
QUIET_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Minimap.Visible": False,
}


def open_app(driver, url: str, timeout: float = 240.0) -> list[dict]:
    """Load the frontend and wait until it has registered the server's node types; its console log so far."""
    import urllib.request

    req = urllib.request.Request(
        url + "/settings", data=json.dumps(QUIET_SETTINGS).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=30).close()
    driver.get(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script(
            "return !!(window.app && app.graph && window.LiteGraph && "
            "LiteGraph.registered_node_types['HyperSDLoraLoader'])"
        ):
            time.sleep(1.0)  # extensions finish their setup
            return driver.get_log("browser")
        time.sleep(0.5)
    raise TimeoutError(f"the ComfyUI frontend at {url} did not register the Hyper-SD nodes within {timeout:.0f} s")


def load_workflow(driver, wf: dict) -> dict:
    return driver.execute_async_script(LOAD_JS, wf)


def canvas_jpeg(driver, width: int = THUMBNAIL_WIDTH) -> bytes:
    """The graph canvas as a JPEG thumbnail."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    time.sleep(1.0)  # let the canvas redraw after fitting the view
    png = driver.find_element(By.CSS_SELECTOR, "canvas#graph-canvas").screenshot_as_png
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80, optimize=True)
    return buf.getvalue()


def main() -> None:
    sys.path.insert(0, str(HERE))
    from comfy_server import ComfyServer
    from hypersd_core.lora_formats import atomic_write

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True, type=Path, help="a ComfyUI tree with this pack in custom_nodes/")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hypersd-thumbs-"))
    dirs = {name: base / name for name in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    (base / "extra_model_paths.yaml").write_text("{}\n")
    server = ComfyServer(args.comfyui, dirs, base / "extra_model_paths.yaml").start()
    try:
        with chromium() as driver:
            open_app(driver, server.url)
            for path in sorted((REPO / "workflows").glob("*.json")):
                result = load_workflow(driver, json.loads(path.read_text()))
                if result.get("error") or result.get("missing"):
                    raise SystemExit(f"{path.name}: {result.get('error') or result['missing']}")
                jpg = canvas_jpeg(driver)
                atomic_write(str(path.with_suffix(".jpg")), lambda tmp, data=jpg: Path(tmp).write_bytes(data))
                print(f"{path.with_suffix('.jpg').name}: {len(jpg) / 1e3:.0f} kB")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
