"""The live demo's web page: a prompt box and an image that follows it as the user types.

Debounced input; at most one request in flight and one pending (the newest replaces it), so
stale prompts are dropped, never queued up; responses older than the image shown are ignored.
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
  .dim { color: #999; }
</style>
</head>
<body>
<h1>Hyper-SD real-time</h1>
<p class="dim" id="model">__MODEL__</p>
<input id="prompt" type="text" placeholder="type a prompt" autofocus autocomplete="off">
<input id="seed" type="number" value="0" min="0" title="seed">
<img id="image" alt="generated image" data-seq="0">
<div id="stats"><span id="ms">-</span> ms per image · <span id="ips">-</span> images/s
  <span class="dim">· round trip <span id="rtt">-</span> ms · shown <span id="count">0</span></span></div>
<div id="status" class="dim"></div>
<script>
const DEBOUNCE_MS = __DEBOUNCE__;
const $ = (id) => document.getElementById(id);
const client = Math.random().toString(36).slice(2);
let seq = 0, shown = 0, count = 0, inflight = false, pending = null, timer = null;

function changed() {
  clearTimeout(timer);
  timer = setTimeout(request, DEBOUNCE_MS);
}

function request() {
  const body = { prompt: $("prompt").value, seed: Number($("seed").value) || 0, seq: ++seq, client };
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
</script>
</body>
</html>
"""


def render_page(model_description: str, debounce_ms: int = 40) -> bytes:
    import html

    return (
        PAGE.replace("__MODEL__", html.escape(model_description))
        .replace("__DEBOUNCE__", str(int(debounce_ms)))
        .encode("utf-8")
    )
