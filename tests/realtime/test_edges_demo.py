"""The demo's HTTP server under bad requests and load: every bad body gets a status and a one-line
message (nothing hangs, nothing drops the connection silently), slow clients are cut off at the
read deadline even when they keep trickling, hundreds of slow connections cost no thread and do
not delay a normal request, and beyond the connection cap a client gets a fast 503.
Table-driven, in-process, tiny model; the clients are asyncio sockets (no client threads), so
threading.active_count() counts the server's threads."""

import asyncio
import json
import socket
import threading
import time

import pytest

from benchmarks.demo_load import PARTIAL_HEAD, SlowClients, connect, generate_body, request
from hypersd_demo import server as demo


@pytest.fixture
def start(tiny):
    """start(read_timeout=1.0, **make_server kwargs): a running in-process server, warmed up."""
    from hypersd_demo.models import build_generator

    servers = []

    def _start(read_timeout: float = 1.0, **kw):
        gen, _ = build_generator(tiny)
        srv = demo.make_server(demo.DemoState(gen, 32, "tiny"), 0, read_timeout=read_timeout, **kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        status, _, _ = asyncio.run(request(srv.server_address[1], "POST", "/generate", generate_body("warm")))
        assert status == 200
        return srv

    yield _start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def served(start):
    return start()


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
    ("2 MB body", _post(b"x" * 10, 2_000_000), 413, "the limit is"),
    ("not JSON", _post(b"{nope", 5), 400, "not valid JSON"),
    ("JSON list", _post(_json([1, 2]), len(_json([1, 2]))), 400, "must be a JSON object"),
    ("deep nesting", _post(b"[" * 5000, 5000), 400, "nested too deeply"),
    ("seed 1e400", _post(b'{"seed": 1e400}', 15), 400, "seed must be an integer"),
    ("seed string", _post(_json({"seed": "7"}), len(_json({"seed": "7"}))), 400, "seed must be an integer"),
    ("prompt not a string", _post(_json({"prompt": 5}), len(_json({"prompt": 5}))), 400, "prompt must be a string"),
    (
        "drawing without a ControlNet",
        _post(_json({"control": "data:image/png;base64,aGk="}), len(_json({"control": "data:image/png;base64,aGk="}))),
        400,
        "no ControlNet: start it with --controlnet PATH",
    ),
    (
        "prompt 10k chars",
        _post(_json({"prompt": "a" * 10_000}), len(_json({"prompt": "a" * 10_000}))),
        413,
        "the limit is 2000",
    ),
    ("not HTTP", b"hello there\r\n\r\n", 400, "bad request line"),
    ("PUT", b"PUT /generate HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501, "use GET or POST"),
    ("70 kB header line", b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "longer than 65536"),
    ("unknown path", b"GET /nope HTTP/1.1\r\n\r\n", 404, "not found"),
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


def _normal(port: int, seq: int = 1, client: str = "t"):
    return request(port, "POST", "/generate", generate_body(f"a digit {seq}", 0, seq, client))


async def _slow_request(port: int, at_once: bytes, trickle: bytes, every: float):
    """Send ``at_once``, then ``trickle`` a byte every ``every`` s until the server replies."""
    t0 = time.perf_counter()
    reader, writer = await connect(port)
    writer.write(at_once)
    reading = asyncio.ensure_future(reader.read())
    for b in trickle:
        if reading.done():
            break
        writer.write(bytes([b]))
        await asyncio.wait([reading], timeout=every)
    data = await asyncio.wait_for(reading, 10)
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.split(b"\r\n\r\n", 1)[-1].decode(), time.perf_counter() - t0


SLOW = [
    # what, sent at once, then trickled a byte at a time, seconds between bytes, status, words
    ("sends nothing", b"", b"", 0, 408, "the request did not arrive within 1 s"),
    ("trickles the head", b"", PARTIAL_HEAD, 0.1, 408, "the request did not arrive within 1 s"),
    ("trickles the body", _post(b"", 60), b'{"prompt": "' + b"a" * 46 + b'"}', 0.1, 408, "the body did not arrive"),
]


@pytest.mark.parametrize("what, at_once, trickle, every, status, words", SLOW, ids=[c[0] for c in SLOW])
def test_slow_clients_are_cut_off_at_the_read_deadline(served, what, at_once, trickle, every, status, words):
    port = served.server_address[1]
    got, body, secs = asyncio.run(_slow_request(port, at_once, trickle, every))
    assert got == status and words in body, (got, body)
    assert 0.9 <= secs < 3.0, f"cut off after {secs:.2f} s; the read deadline is 1 s"


async def _hold_slow_and_request(port: int, n_slow: int, n_clients: int):
    """Hold ``n_slow`` slow connections, then send ``n_clients`` normal requests at once; the peak
    of threading.active_count() while the connections are held."""
    peak = threading.active_count()
    slow = SlowClients(port, n_slow, trickle_s=0.5)
    await slow.start()
    sampling = True

    async def sample():
        nonlocal peak
        while sampling:
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    _, info, _ = await request(port, "GET", "/info")
    replies = await asyncio.gather(*(_normal(port, 1, f"c{i}") for i in range(n_clients)))
    held = slow.connected
    sampling = False
    await sampler
    await slow.stop()
    return held, json.loads(info), replies, peak


LOAD = [
    # slow connections held, parallel clients, seconds the slowest normal request may take
    (300, 1, 1.0),
    (100, 50, 15.0),
]


@pytest.mark.parametrize("n_slow, n_clients, limit_s", LOAD, ids=[f"{s} slow, {c} clients" for s, c, _ in LOAD])
def test_normal_requests_answer_while_slow_connections_are_held(start, n_slow, n_clients, limit_s):
    srv = start(read_timeout=30.0)  # the slow connections stay open for the whole test
    port = srv.server_address[1]
    base = threading.active_count()
    held, info, replies, peak = asyncio.run(_hold_slow_and_request(port, n_slow, n_clients))
    assert held == n_slow and info["open_connections"] >= n_slow, (held, info)
    assert [r[0] for r in replies] == [200] * n_clients
    slowest = max(r[2] for r in replies)
    assert slowest < limit_s, f"a normal request took {slowest:.2f} s with {n_slow} slow connections open"
    assert peak - base <= 1, f"{peak - base} more server threads under load (no thread per connection)"
    assert asyncio.run(_normal(port, 2))[0] == 200  # still up once they are gone


def test_beyond_the_connection_cap_a_fast_503_then_served_again(start):
    srv = start(read_timeout=30.0, max_connections=8)
    port = srv.server_address[1]
    for _ in range(200):  # the warm-up connection has closed on the server's side too
        if srv.open == 0:
            break
        time.sleep(0.01)

    async def scenario():
        slow = SlowClients(port, 8)
        await slow.start()
        refused = await _normal(port, 1)
        await slow.stop()
        for _ in range(100):  # the server sees the 8 close at once; allow a busy machine a moment
            after = await _normal(port, 2)
            if after[0] == 200:
                break
            await asyncio.sleep(0.02)
        return refused, after

    (status, body, secs), after = asyncio.run(scenario())
    assert status == 503 and b"too many connections" in body and secs < 1.0, (status, body, secs)
    assert after[0] == 200


def test_requests_made_stale_while_queued_answer_204(served):
    """Generations run one at a time; a client's newer request makes its queued older ones 204."""
    port = served.server_address[1]
    gate = threading.Event()
    served.worker.submit(gate.wait, 10)  # hold the one generation thread busy

    async def scenario():
        tasks = [asyncio.create_task(_normal(port, seq, "typist")) for seq in range(1, 6)]
        for _ in range(500):  # until all five have arrived
            if served.state.latest.get("typist") == 5:
                break
            await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    replies = asyncio.run(scenario())
    assert [r[0] for r in replies] == [204, 204, 204, 204, 200]
    assert json.loads(replies[-1][1])["seq"] == 5


def test_expect_100_continue_is_answered_before_the_body(served):
    """curl sends bodies over 1 kB only after a 100 Continue (or after waiting a second)."""
    port = served.server_address[1]
    body = generate_body("a cat " * 200)

    async def scenario():
        reader, writer = await connect(port)
        head = f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        writer.write(head.encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(body)
        final = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return interim, final

    interim, final = asyncio.run(scenario())
    assert interim.startswith(b"HTTP/1.1 100 ") and final.startswith(b"HTTP/1.1 200 "), (interim, final[:80])


def test_port_in_use_fails_before_the_model_loads():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}.*--port 0"):
            demo.main(["--port", str(port), "--path", "/nonexistent/model"])


@pytest.mark.skipif(demo.resource is None, reason="no open-file limit on this platform")
@pytest.mark.parametrize(
    "soft, cap", [(512, 512 - demo.FD_RESERVE), (demo.MAX_CONNECTIONS + 2 * demo.FD_RESERVE, demo.MAX_CONNECTIONS)]
)
def test_connection_cap_fits_the_open_file_limit(soft, cap):
    res = demo.resource
    old = res.getrlimit(res.RLIMIT_NOFILE)
    if old[1] != res.RLIM_INFINITY and old[1] < soft:
        pytest.skip(f"hard open-file limit {old[1]} < {soft}")
    try:
        res.setrlimit(res.RLIMIT_NOFILE, (soft, old[1]))
        assert demo.connection_cap() == cap
    finally:
        res.setrlimit(res.RLIMIT_NOFILE, old)
