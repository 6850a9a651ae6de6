"""The demo's HTTP server under bad requests and load: every bad body gets a status and a one-line
message (nothing hangs, nothing drops the connection silently), slow clients are cut off, the
handler threads stay bounded, and a normal request still answers. Table-driven, in-process."""

import json
import socket
import threading
import time

import pytest

from hypersd_demo import server as demo


@pytest.fixture
def served(tiny, monkeypatch):
    from hypersd_demo.models import build_generator

    monkeypatch.setattr(demo, "READ_TIMEOUT_S", 1.0)
    gen, _ = build_generator(tiny)
    srv = demo.make_server(demo.DemoState(gen, 32, "tiny"), 0)
    srv.RequestHandlerClass.timeout = 1.0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _raw(port: int, data: bytes, wait: float = 10.0) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except TimeoutError:
                break
            if not c:
                break
            chunks.append(c)
    text = b"".join(chunks).decode("utf-8", "replace")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    return status, text.split("\r\n\r\n", 1)[-1]


def _post(body: bytes, length: int | None = None) -> bytes:
    head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n".encode()
    return head + b"\r\n" + body


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


CASES = [
    ("negative length", _post(b"{}", -1), 400, "Content-Length must be >= 0"),
    ("no length", _post(b""), 411, "Content-Length is required"),
    (
        "length not a number",
        _post(b"{}", None).replace(b"\r\n\r\n", b"\r\nContent-Length: many\r\n\r\n"),
        400,
        "must be a number",
    ),
    ("short body", _post(b'{"prompt": "a', 100), 408, "did not arrive"),
    ("100 kB body", _post(b"x" * 10, 100_000), 413, "the limit is"),
    ("not JSON", _post(b"{nope", 5), 400, "not valid JSON"),
    ("JSON list", _post(_json([1, 2]), len(_json([1, 2]))), 400, "must be a JSON object"),
    ("deep nesting", _post(b"[" * 5000, 5000), 400, "nested too deeply"),
    ("seed 1e400", _post(b'{"seed": 1e400}', 15), 400, "seed must be an integer"),
    ("seed string", _post(_json({"seed": "7"}), len(_json({"seed": "7"}))), 400, "seed must be an integer"),
    ("prompt not a string", _post(_json({"prompt": 5}), len(_json({"prompt": 5}))), 400, "prompt must be a string"),
    (
        "prompt 10k chars",
        _post(_json({"prompt": "a" * 10_000}), len(_json({"prompt": "a" * 10_000}))),
        413,
        "the limit is 2000",
    ),
]


@pytest.mark.parametrize("what, data, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_requests(served, what, data, status, words):
    port = served.server_address[1]
    t0 = time.perf_counter()
    got, body = _raw(port, data)
    assert got == status and words in body, (got, body)
    assert time.perf_counter() - t0 < 5  # answered, not hung
    ok, body = _raw(port, _post(_json({"prompt": "a cat", "seq": 1}), len(_json({"prompt": "a cat", "seq": 1}))))
    assert ok == 200 and json.loads(body)["image"].startswith("data:image/png")


def test_slow_clients_are_cut_off_and_threads_stay_bounded(served, monkeypatch):
    port = served.server_address[1]
    served.max_connections = 64
    served.slots = threading.BoundedSemaphore(64)
    base = threading.active_count()
    slow = []
    for _ in range(300):  # connect and never send a full request
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /generate HTTP/1.1\r\n")
        slow.append(s)
    time.sleep(0.3)
    peak = threading.active_count() - base
    assert peak <= 64 + 2, peak
    assert served.refused > 0  # beyond 64 at once: answered 503 at once, no thread each
    time.sleep(1.5)  # past the read timeout: the slow ones are disconnected
    ok, body = _raw(port, _post(_json({"prompt": "a dog", "seq": 2}), len(_json({"prompt": "a dog", "seq": 2}))))
    assert ok == 200
    assert threading.active_count() - base <= 2
    for s in slow:
        s.close()


def test_port_in_use_fails_before_the_model_loads():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}.*--port 0"):
            demo.main(["--port", str(port), "--path", "/nonexistent/model"])
