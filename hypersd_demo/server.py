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
import socket
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
MAX_BODY_BYTES = 16 * 1024
READ_TIMEOUT_S = 5.0  # a client that sends its request slower than this is disconnected
MAX_CONNECTIONS = 64  # handler threads at once; more connections are answered 503 at once


class BadRequest(ValueError):
    """A request we answer with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_generate_request(body: bytes) -> tuple[str, int, str, int]:
    """(prompt, seed, client, seq) from a /generate body, or BadRequest naming the field."""
    try:
        req = json.loads(body)
    except RecursionError:
        raise BadRequest(400, "the JSON body is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the body is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(req, dict):
        raise BadRequest(400, 'the body must be a JSON object like {"prompt": "...", "seed": 0}')
    prompt = req.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest(400, "prompt must be a string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(413, f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    fields = {}
    for name, lo, hi in (("seed", 0, 2**31 - 1), ("seq", 0, 2**63 - 1)):
        v = req.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise BadRequest(400, f"{name} must be an integer in [{lo}, {hi}], got {str(v)[:40]}")
        fields[name] = v
    client = req.get("client", "-")
    if not isinstance(client, str) or len(client) > 64:
        raise BadRequest(400, "client must be a string of at most 64 characters")
    return prompt, fields["seed"], client, fields["seq"]


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
        timeout = READ_TIMEOUT_S  # socket timeout: a slow or stalled client cannot hold a thread

        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

        def _read_body(self) -> bytes:
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise BadRequest(411, "Content-Length is required")
            try:
                n = int(raw)
            except ValueError:
                raise BadRequest(400, f"Content-Length must be a number, got {raw[:20]!r}") from None
            if n < 0:
                raise BadRequest(400, f"Content-Length must be >= 0, got {n}")
            if n > MAX_BODY_BYTES:
                raise BadRequest(413, f"the body is {n} bytes; the limit is {MAX_BODY_BYTES}")
            try:
                body = self.rfile.read(n)
            except (TimeoutError, socket.timeout):
                raise BadRequest(408, f"the body did not arrive within {READ_TIMEOUT_S:g} s") from None
            if len(body) < n:
                raise BadRequest(400, f"the body is {len(body)} bytes, shorter than its Content-Length {n}")
            return body

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
                prompt, seed, client, seq = parse_generate_request(self._read_body())
            except BadRequest as exc:
                self.close_connection = True
                self._send(exc.status, f"{exc}".encode(), "text/plain; charset=utf-8")
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
    server = BoundedThreadingHTTPServer((HOST, port), make_handler(state, page))
    server.daemon_threads = True
    return server


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once: the rest get 503 at once."""

    max_connections = MAX_CONNECTIONS
    request_queue_size = 256  # listen backlog: accept (and refuse) a burst instead of stalling it in the kernel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 26\r\nConnection: close\r\n\r\nbusy: too many connections"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def check_port_free(port: int) -> None:
    """Fail before the model loads when the port is taken (0 always works)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((HOST, port))
    except OSError as e:
        raise SystemExit(
            f"error: cannot listen on {HOST}:{port} ({e.strerror}); pass --port 0 for a free port or stop what uses it"
        ) from None
    finally:
        probe.close()


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
    check_port_free(args.port)
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
