"""Live demo: a local web page whose image follows the prompt as it is typed.

    python -m hypersd_demo                                 # embedded digits model, CPU
    python -m hypersd_demo --model sd15 --path /models/sd15 --device cuda --dtype bf16 \
        --tiny-vae /models/taesd --compile reduce-overhead --lora hyper-sd15-1step-lora.safetensors

Serves on 127.0.0.1 only (``--port 0`` picks a free port; the URL is printed on stdout).
Generations run one at a time; a request that became stale while waiting (its client already
sent a newer one) is answered 204 without generating.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from hypersd_models.loading import DTYPES, ModelLoadError
from hypersd_models.tuning import inductor_tuning

from .models import DEFAULT_SIZE, KINDS, build_generator, load_components
from .page import render_page

log = logging.getLogger("hypersd_demo")

HOST = "127.0.0.1"
MAX_PROMPT_CHARS = 2000


def encode_image(img: torch.Tensor) -> str:
    """uint8 (H, W, 3) -> data URL (PNG for small images, JPEG for large ones)."""
    from PIL import Image

    arr = img.numpy()
    pil = Image.fromarray(arr)
    buf = io.BytesIO()
    small = arr.shape[0] * arr.shape[1] <= 128 * 128
    pil.save(buf, format="PNG" if small else "JPEG", quality=90)
    mime = "image/png" if small else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


class DemoState:
    """The generator plus the newest request number seen per client."""

    def __init__(self, generator, size: int, description: str):
        self.generator = generator
        self.size = size
        self.description = description
        self.lock = threading.Lock()
        self.latest: dict[str, int] = {}
        self.latest_lock = threading.Lock()
        self.dropped = 0

    def note(self, client: str, seq: int) -> None:
        with self.latest_lock:
            self.latest[client] = max(seq, self.latest.get(client, 0))
            if len(self.latest) > 10_000:
                self.latest.clear()

    def is_stale(self, client: str, seq: int) -> bool:
        with self.latest_lock:
            return seq < self.latest.get(client, 0)

    def generate(self, prompt: str, seed: int, client: str, seq: int) -> dict | None:
        self.note(client, seq)
        with self.lock:
            if self.is_stale(client, seq):
                self.dropped += 1
                return None
            img = self.generator.generate(prompt, seed=seed, height=self.size, width=self.size)
            ms = self.generator.stats.last_ms
        return {"seq": seq, "prompt": prompt, "ms": ms, "image": encode_image(img[0])}


def make_handler(state: DemoState, page: bytes):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

        def _send(self, code: int, body: bytes = b"", ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif self.path == "/info":
                g = state.generator
                info = {
                    "model": state.description,
                    "size": state.size,
                    "steps": g.steps,
                    "device": str(g.device),
                    "compile": g.stats.compile_status,
                    "text_encoder_calls": g.stats.text_encoder_calls,
                    "images": g.stats.images,
                    "dropped_stale": state.dropped,
                }
                self._send(200, json.dumps(info).encode())
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self):
            if self.path != "/generate":
                self._send(404, b"not found", "text/plain")
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(min(n, 64 * 1024)))
                prompt = str(req.get("prompt", ""))[:MAX_PROMPT_CHARS]
                seed = int(req.get("seed", 0)) & 0x7FFF_FFFF
                seq = int(req.get("seq", 0))
                client = str(req.get("client", "-"))[:64]
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                self._send(400, f"bad request: {exc}".encode(), "text/plain")
                return
            try:
                out = state.generate(prompt, seed, client, seq)
            except Exception as exc:  # report to the page instead of dropping the connection
                log.exception("generation failed")
                self._send(500, f"generation failed: {type(exc).__name__}: {exc}".encode(), "text/plain")
                return
            if out is None:
                self._send(204)
            else:
                self._send(200, json.dumps(out).encode())

    return Handler


def make_server(state: DemoState, port: int = 0, debounce_ms: int = 40) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:port (0 = a free port) serving the page and /generate."""
    page = render_page(
        f"{state.description} · {state.size}×{state.size} · {state.generator.steps} step(s) · "
        f"{state.generator.device} · {state.generator.stats.compile_status}",
        debounce_ms,
    )
    server = ThreadingHTTPServer((HOST, port), make_handler(state, page))
    server.daemon_threads = True
    return server


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hypersd_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=KINDS, default="embedded")
    p.add_argument("--path", help="sd15/sdxl: diffusers folder or .safetensors file; embedded: its folder")
    p.add_argument("--config", help="single-file checkpoints: a local diffusers folder with the configs")
    p.add_argument("--tiny-vae", help="TAESD/TAESDXL folder or taesd_decoder.safetensors (models/vae_approx)")
    p.add_argument("--tokenizer", help="CLIP tokenizer folder (embedded/tiny models)")
    p.add_argument("--lora", help="a Hyper-SD LoRA .safetensors to merge into the UNet")
    p.add_argument("--lora-strength", type=float, default=1.0)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="default 1; 4 for the embedded teacher without --lora (it is not distilled)",
    )
    p.add_argument(
        "--timestep",
        type=int,
        default=None,
        help="one-step start timestep (default: the LoRA header's, else 999; 800: SDXL 1-step UNet)",
    )
    p.add_argument("--eta", type=float, default=None, help="TSCD gamma for steps > 1 (default 0.3; 0 for the teacher)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's native size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--tuned", action="store_true", help="GPU: fused QKV, channels-last, inductor tuning")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--debounce-ms", type=int, default=40)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        comp = load_components(args.model, args.path, dtype, args.config, args.tiny_vae, args.tokenizer)
    except (ModelLoadError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    steps, eta = args.steps, args.eta
    if steps is None:
        teacher = args.model == "embedded" and not args.lora
        steps = 4 if teacher else 1
        eta = 0.0 if teacher and eta is None else eta
        if teacher:
            log.info(
                "the embedded teacher is not distilled: 4 DDIM steps (train a TSCD LoRA and pass "
                "--lora FILE --steps 1 for one step)"
            )
    gen, _ = build_generator(
        comp,
        device=device,
        dtype=dtype,
        lora=args.lora,
        lora_strength=args.lora_strength,
        steps=steps,
        timestep=args.timestep,
        eta=0.3 if eta is None else eta,
        compile=args.compile,
        tune=args.tuned,
    )
    if args.tuned and args.compile:
        inductor_tuning()
    size = args.size or comp.size or DEFAULT_SIZE[args.model]
    if args.compile:
        log.info("compiling and capturing for %dx%d ...", size, size)
        log.info("ready after %.1f s (%s)", gen.warmup(size, size), gen.stats.compile_status)
    state = DemoState(gen, size, comp.description)
    server = make_server(state, args.port, args.debounce_ms)
    print(f"serving on http://{HOST}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
