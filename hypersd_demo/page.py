"""The live demo's web page: a prompt box and an image that follows it as the user types, and,
when the model has a ControlNet, a drawing canvas whose strokes the image follows as they are drawn.

Debounced input (typing, drawing, strength); at most one request in flight and one pending (the
newest replaces it), so stale prompts and drawings are dropped, never queued up; responses older
than the image shown are ignored. The canvas is sent as a PNG data URL at the model's image size
(white strokes on black, as scribble ControlNets take them); an empty canvas sends no control.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Hyper-SD real-time</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; background: #111; color: #eee; }
  #prompt { width: min(40rem, 90vw); font-size: 1.2rem; padding: .4rem; }
  #seed { width: 6rem; font-size: 1.2rem; padding: .4rem; }
  #image { display: block; margin-top: 1rem; width: min(512px, 90vw); image-rendering: pixelated;
           background: #222; min-height: 64px; }
  #stats { margin-top: .6rem; font-variant-numeric: tabular-nums; }
  #row { display: flex; gap: 1.5rem; align-items: flex-start; flex-wrap: wrap; }
  #draw { display: none; margin-top: 1rem; }
  #canvas { width: 256px; height: 256px; background: #000; border: 1px solid #555; cursor: crosshair;
            touch-action: none; display: block; }
  .dim { color: #999; }
</style>
</head>
<body>
<h1>Hyper-SD real-time</h1>
<p class="dim" id="model">__MODEL__</p>
<input id="prompt" type="text" placeholder="type a prompt" autofocus autocomplete="off">
<input id="seed" type="number" value="0" min="0" title="seed">
<div id="row">
<div id="draw">
  <canvas id="canvas" width="256" height="256" title="draw here: the image follows your strokes"></canvas>
  <button id="clear" type="button">clear</button>
  <label class="dim">control <input id="strength" type="range" min="0" max="2" step="0.05" value="1"></label>
</div>
<img id="image" alt="generated image" data-seq="0">
</div>
<div id="stats"><span id="ms">-</span> ms per image · <span id="ips">-</span> images/s
  <span class="dim">· round trip <span id="rtt">-</span> ms · shown <span id="count">0</span></span></div>
<div id="status" class="dim"></div>
<script>
const DEBOUNCE_MS = __DEBOUNCE__;
const CONTROL = __CONTROL__;  // null, or {size: the model's image size} when it has a ControlNet
const $ = (id) => document.getElementById(id);
const client = Math.random().toString(36).slice(2);
let seq = 0, shown = 0, count = 0, inflight = false, pending = null, timer = null, drawn = false;

function controlImage() {
  if (!CONTROL || !drawn) return null;
  const small = document.createElement("canvas");
  small.width = small.height = CONTROL.size;
  const g = small.getContext("2d");
  g.imageSmoothingEnabled = true;
  g.imageSmoothingQuality = "high";
  g.drawImage($("canvas"), 0, 0, CONTROL.size, CONTROL.size);
  return small.toDataURL("image/png");
}

function changed() {
  clearTimeout(timer);
  timer = setTimeout(request, DEBOUNCE_MS);
}

function request() {
  const body = { prompt: $("prompt").value, seed: Number($("seed").value) || 0, seq: ++seq, client };
  const control = controlImage();
  if (control) { body.control = control; body.strength = Number($("strength").value); }
  if (inflight) { pending = body; return; }  // newest wins; an older pending prompt is dropped
  send(body);
}

async function send(body) {
  inflight = true;
  const t0 = performance.now();
  try {
    const r = await fetch("/generate", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(body) });
    if (r.status === 200) {
      const d = await r.json();
      if (d.seq > shown) {
        shown = d.seq;
        count += 1;
        $("image").src = d.image;
        $("image").dataset.seq = String(d.seq);
        $("image").dataset.prompt = d.prompt;
        $("image").dataset.control = d.control ? "1" : "0";
        $("ms").textContent = d.ms.toFixed(1);
        $("ips").textContent = (1000 / d.ms).toFixed(1);
        $("rtt").textContent = (performance.now() - t0).toFixed(0);
        $("count").textContent = String(count);
        $("status").textContent = "";
      }
    } else if (r.status !== 204) {
      $("status").textContent = "error " + r.status + ": " + (await r.text());
    }
  } catch (e) {
    $("status").textContent = "error: " + e;
  }
  inflight = false;
  if (pending) { const p = pending; pending = null; send(p); }
}

$("prompt").addEventListener("input", changed);
$("seed").addEventListener("input", changed);

if (CONTROL) {  // the drawing canvas: white strokes on black, sent (debounced) while drawing
  $("draw").style.display = "block";
  const c = $("canvas"), g = c.getContext("2d");
  g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = "#fff"; g.lineCap = g.lineJoin = "round";
  g.lineWidth = Math.max(4, Math.round(c.width * 2.5 / CONTROL.size));  // ~2.5 image pixels
  let down = false, last = null;
  const at = (e) => { const r = c.getBoundingClientRect();
    return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height]; };
  c.addEventListener("pointerdown", (e) => { down = true; last = at(e); c.setPointerCapture(e.pointerId);
    g.beginPath(); g.arc(last[0], last[1], g.lineWidth / 2, 0, 2 * Math.PI); g.fillStyle = "#fff"; g.fill();
    drawn = true; changed(); });
  c.addEventListener("pointermove", (e) => { if (!down) return; const p = at(e);
    g.beginPath(); g.moveTo(last[0], last[1]); g.lineTo(p[0], p[1]); g.stroke(); last = p; changed(); });
  const up = () => { if (down) { down = false; changed(); } };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
  $("clear").addEventListener("click", () => { g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height);
    drawn = false; changed(); });
  $("strength").addEventListener("input", changed);
}
</script>
</body>
</html>
"""


def render_page(model_description: str, debounce_ms: int = 40, control_size: int | None = None) -> bytes:
    """The page; ``control_size`` (the model's image size) shows the drawing canvas (a ControlNet is loaded)."""
    import html
    import json

    control = "null" if control_size is None else json.dumps({"size": int(control_size)})
    return (
        PAGE.replace("__MODEL__", html.escape(model_description))
        .replace("__DEBOUNCE__", str(int(debounce_ms)))
        .replace("__CONTROL__", control)
        .encode("utf-8")
    )
