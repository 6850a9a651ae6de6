"""Live demo: a local web page whose image follows the prompt as it is typed and, with a
ControlNet, the strokes drawn on its canvas (the embedded model loads its scribble ControlNet).

    python -m hypersd_demo                                 # embedded digits model, CPU
    python -m hypersd_demo --model sd15 --path /models/sd15 --device cuda --dtype bf16 \
        --tiny-vae /models/taesd --compile reduce-overhead --lora hyper-sd15-1step-lora.safetensors \
        --controlnet /models/control_v11p_sd15_scribble     # a diffusers folder or one .safetensors file

Serves on 127.0.0.1 only (``--port 0`` picks a free port; the URL is printed on stdout).
One event loop serves every connection, so slow or idle clients cost no thread; generations run
one at a time on one worker thread, and a request that became stale while waiting (its client
already sent a newer one) is answered 204 without generating.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import numpy as np
import torch

try:
    import resource  # Unix: the open-file limit
except ImportError:  # Windows
    resource = None

from hypersd_models.loading import DTYPES, ModelLoadError
from hypersd_models.tuning import inductor_tuning

from .models import DEFAULT_SIZE, KINDS, build_generator, load_components
from .page import render_page

log = logging.getLogger("hypersd_demo")

HOST = "127.0.0.1"
MAX_PROMPT_CHARS = 2000
MAX_BODY_BYTES = 1024 * 1024  # a prompt plus a drawing (a PNG data URL at the image size)
MAX_CONTROL_SIDE = 4096  # a control image's width/height as sent (it is resized to the image size)
READ_TIMEOUT_S = 5.0  # a request must arrive in full within this after connecting, else 408
WRITE_TIMEOUT_S = 10.0  # a client that does not read its reply within this is disconnected
LINGER_S = 1.0  # after a reply, unread request bytes are drained this long before closing
MAX_CONNECTIONS = 1024  # open at once; the next connection is answered 503 and closed
FD_RESERVE = 128  # file descriptors kept for the model, logs and refusing connections
LISTEN_BACKLOG = 1024
MAX_LINE_BYTES = 65536  # request line or one header line (as http.server)
MAX_HEADERS = 100


class BadRequest(ValueError):
    """A request we answer with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_generate_request(body: bytes, control: tuple[int, int] | None = None) -> tuple:
    """(prompt, seed, client, seq, control_image, strength) from a /generate body, or BadRequest
    naming the field. ``control`` = (channels, size) of the loaded ControlNet and image (None: no
    ControlNet); the body's optional "control" (a PNG/JPEG data URL) becomes a (1, channels, size,
    size) tensor in [0, 1], else None; "strength" (default 1) is its control strength."""
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
    strength = req.get("strength", 1.0)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 2:
        raise BadRequest(400, f"strength must be a number in [0, 2], got {str(strength)[:40]}")
    image = req.get("control")
    if image is not None:
        if control is None:
            raise BadRequest(400, "this demo has no ControlNet: start it with --controlnet PATH to send a drawing")
        image = decode_control(image, *control)
    return prompt, fields["seed"], client, fields["seq"], image, float(strength)


def decode_control(value, channels: int, size: int) -> torch.Tensor:
    """A PNG/JPEG data URL -> (1, channels, size, size) in [0, 1], or BadRequest saying what is wrong."""
    from PIL import Image, UnidentifiedImageError

    from hypersd_models.controlnet import control_image_from_array

    if not isinstance(value, str) or not value.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")):
        raise BadRequest(400, "control must be a PNG or JPEG data URL (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(value.split(",", 1)[1], validate=True)
    except ValueError:
        raise BadRequest(400, "control is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            sent = im.size  # from the header: checked before the pixels are decoded
            if max(sent) <= MAX_CONTROL_SIDE:
                arr = np.array(im.convert("RGB" if channels == 3 else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadRequest(400, "control is not a readable PNG or JPEG image") from None
    if max(sent) > MAX_CONTROL_SIDE:
        raise BadRequest(413, f"control is {sent[0]}x{sent[1]}; the limit is {MAX_CONTROL_SIDE} a side")
    return control_image_from_array(arr, channels, size, binarize=channels == 1)


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

    @property
    def control(self) -> tuple[int, int] | None:
        """(channels, size) of the control image the ControlNet takes; None without one."""
        c = getattr(self.generator, "control_channels", 0)
        return (c, self.size) if c else None

    def generate(
        self, prompt: str, seed: int, client: str, seq: int, control=None, strength: float = 1.0
    ) -> dict | None:
        self.note(client, seq)
        with self.lock:
            if self.is_stale(client, seq):
                self.dropped += 1
                return None
            img = self.generator.generate(
                prompt,
                seed=seed,
                height=self.size,
                width=self.size,
                control_image=control,
                control_strength=strength,
            )
            ms = self.generator.stats.last_ms
        return {"seq": seq, "prompt": prompt, "ms": ms, "control": control is not None, "image": encode_image(img[0])}


class DemoServer:
    """HTTP on one asyncio event loop: a connection costs no thread while its request arrives.

    One request per connection (answered with ``Connection: close``). The request (line, headers
    and body) must arrive within ``read_timeout`` of the connection opening, else 408. At most
    ``max_connections`` are open at once; the next one is answered 503 at once and closed.
    Generations run one at a time on a single worker thread.
    Use like ``socketserver``: ``serve_forever()`` in one thread, ``shutdown()`` from another.
    """

    def __init__(
        self,
        state: DemoState,
        page: bytes,
        port: int = 0,
        read_timeout: float | None = None,
        max_connections: int | None = None,
    ):
        self.state = state
        self.page = page
        self.read_timeout = READ_TIMEOUT_S if read_timeout is None else read_timeout
        self.max_connections = max_connections or connection_cap()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((HOST, port))
            self.sock.listen(LISTEN_BACKLOG)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.server_address = self.sock.getsockname()
        self.open = 0  # connections being served now
        self.refused = 0  # connections answered 503 because ``max_connections`` were open
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hypersd-generate")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._done = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- life cycle -------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    async def _serve(self) -> None:
        stop = asyncio.Event()
        with self._lock:
            if self._closing:
                return
            self._loop, self._stop = asyncio.get_running_loop(), stop
        server = await asyncio.start_server(self._connection, sock=self.sock, limit=MAX_LINE_BYTES)
        try:
            await stop.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait until it has returned."""
        with self._lock:
            self._closing = True
            loop, stop = self._loop, self._stop
        if loop is not None:
            loop.call_soon_threadsafe(stop.set)
            self._done.wait()

    def server_close(self) -> None:
        self.sock.close()
        self.worker.shutdown(wait=False, cancel_futures=True)

    # -- one connection ---------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.open >= self.max_connections:
            self.refused += 1
            try:
                await self._finish(writer, reader, *_reply(503, b"busy: too many connections", "text/plain"))
            finally:
                self._writers.discard(writer)
            return
        self.open += 1
        try:
            try:
                reply = await self._answer(reader, writer)
            except BadRequest as exc:
                reply = _reply(exc.status, f"{exc}".encode(), "text/plain; charset=utf-8")
            if reply is not None:
                await self._finish(writer, reader, *reply)
            else:
                writer.transport.abort()
        except OSError:  # the client reset the connection
            writer.transport.abort()
        except Exception:  # a bug must not take the server down; log it and drop this connection
            log.exception("error while serving a connection")
            writer.transport.abort()
        finally:
            self.open -= 1
            self._writers.discard(writer)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple | None:
        """The reply to one request, or None when the client left before sending one."""
        phase = "request"
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await _read_head(reader)
                if head is None:
                    return None
                method, path, headers = head
                log.debug("%s %s", method, path)
                if method == "GET":
                    return self._get(path)
                if method != "POST":
                    raise BadRequest(501, f"method {method[:20]} is not supported; use GET or POST")
                if path != "/generate":
                    return _reply(404, b"not found", "text/plain")
                n = _content_length(headers)
                if headers.get("expect", "").lower() == "100-continue":  # curl asks for bodies over 1 kB
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                phase = "body"
                try:
                    body = await reader.readexactly(n)
                except asyncio.IncompleteReadError as e:
                    raise BadRequest(
                        400, f"the body is {len(e.partial)} bytes, shorter than its Content-Length {n}"
                    ) from None
        except TimeoutError:
            raise BadRequest(408, f"the {phase} did not arrive within {self.read_timeout:g} s") from None
        prompt, seed, client, seq, control, strength = parse_generate_request(body, self.state.control)
        self.state.note(client, seq)  # at arrival: an older request still queued becomes stale
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                self.worker, self._generate, prompt, seed, client, seq, control, strength
            )
        except Exception as exc:  # report to the page instead of dropping the connection
            log.exception("generation failed")
            return _reply(500, f"generation failed: {type(exc).__name__}: {exc}".encode(), "text/plain")
        return _reply(204) if out is None else _reply(200, out)

    def _generate(self, prompt: str, seed: int, client: str, seq: int, control, strength: float) -> bytes | None:
        out = self.state.generate(prompt, seed, client, seq, control, strength)
        return None if out is None else json.dumps(out).encode()

    def _get(self, path: str) -> tuple:
        if path in ("/", "/index.html"):
            return _reply(200, self.page, "text/html; charset=utf-8")
        if path == "/info":
            g, state = self.state.generator, self.state
            info = {
                "model": state.description,
                "size": state.size,
                "steps": g.steps,
                "device": str(g.device),
                "compile": g.stats.compile_status,
                "text_encoder_calls": g.stats.text_encoder_calls,
                "images": g.stats.images,
                "dropped_stale": state.dropped,
                "control": state.control is not None,
                "open_connections": self.open,
                "refused_connections": self.refused,
            }
            return _reply(200, json.dumps(info).encode())
        return _reply(404, b"not found", "text/plain")

    async def _finish(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, head: bytes, body: bytes):
        """Send the reply, half-close, and let the client read it before the socket closes.

        Closing with unread request bytes would reset the connection and could lose the reply,
        so what the client still sends is read and dropped for up to LINGER_S.
        """
        try:
            writer.write(head + body)
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                while await reader.read(65536):
                    pass
        except (TimeoutError, OSError):
            pass
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # the client stopped reading
            else:
                writer.close()


def _reply(status: int, body: bytes = b"", ctype: str = "application/json") -> tuple[bytes, bytes]:
    """(status line and headers, body) of a reply that closes the connection."""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1"), body


async def _read_line(reader: asyncio.StreamReader, status: int, what: str) -> bytes | None:
    """One line with its newline, or None when the client closed the connection before it ended."""
    try:
        line = await reader.readline()
    except ValueError:  # longer than the reader's limit
        raise BadRequest(status, f"the {what} is longer than {MAX_LINE_BYTES} bytes") from None
    return line if line.endswith(b"\n") else None


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    """(method, path, headers with lower-case names), or None when the client left before its end."""
    line = await _read_line(reader, 414, "request line")
    if line is None:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, f"bad request line {line[:60].decode('latin-1').strip()!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader, 431, "header line")
        if line is None:
            return None
        if line in (b"\r\n", b"\n"):
            return parts[0], parts[1], headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name.strip():
            raise BadRequest(400, f"bad header line {line[:60].decode('latin-1').strip()!r}")
        headers[name.strip().lower()] = value.strip()
    raise BadRequest(431, f"more than {MAX_HEADERS} header lines")


def _content_length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length")
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
    return n


def connection_cap(wanted: int = MAX_CONNECTIONS) -> int:
    """``wanted``, lowered to fit the open-file limit (a connection is a file descriptor)."""
    if resource is None:
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - FD_RESERVE))


def raise_fd_limit(wanted: int = MAX_CONNECTIONS + 2 * FD_RESERVE) -> None:
    """Raise the soft open-file limit towards ``wanted`` (at most the hard limit)."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def make_server(
    state: DemoState,
    port: int = 0,
    debounce_ms: int = 40,
    read_timeout: float | None = None,
    max_connections: int | None = None,
) -> DemoServer:
    """A server on 127.0.0.1:port (0 = a free port) serving the page and /generate."""
    page = render_page(
        f"{state.description} · {state.size}×{state.size} · {state.generator.steps} step(s) · "
        f"{state.generator.device} · {state.generator.stats.compile_status}",
        debounce_ms,
        state.size if state.control else None,
    )
    return DemoServer(state, page, port, read_timeout, max_connections)


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
        "--controlnet",
        help="a ControlNet for the model (diffusers folder or .safetensors; scribble or canny): the page "
        "gets a drawing canvas. The embedded model loads its scribble ControlNet unless this is 'none'",
    )
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
    raise_fd_limit()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        comp = load_components(
            args.model, args.path, dtype, args.config, args.tiny_vae, args.tokenizer, controlnet=args.controlnet
        )
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
