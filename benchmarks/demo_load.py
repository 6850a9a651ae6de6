"""The live demo under load, on the embedded model (CPU): 300 slow connections held open (half send
nothing, half trickle a request one byte a second; each reconnects when the server cuts it off)
while one client, then 50 parallel clients, send normal /generate requests.

    python -m benchmarks.demo_load [--slow 300] [--clients 50] [--requests 4] [--threads 1]

Measures the latency of normal requests (one at a time, then 50 in parallel, which queue behind
the one generator), errors, the peak thread count of the server process (/proc/PID/task: the
event loop, the generation worker and torch's own threads), the peak of open connections the
server reports, and that the server still answers afterwards. Writes
benchmarks/results/demo_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from .machine import REPO, describe, machine_info
from .report import RESULTS_DIR, markdown_table, write_json, write_text

PARTIAL_HEAD = b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A loopback connection made without getaddrinfo (which would start executor threads)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def generate_body(prompt: str, seed: int = 0, seq: int = 1, client: str = "load") -> bytes:
    return json.dumps({"prompt": prompt, "seed": seed, "seq": seq, "client": client}).encode()


async def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30.0):
    """(status, body, seconds) of one HTTP request on a fresh connection."""
    t0 = time.perf_counter()
    async with asyncio.timeout(timeout):
        reader, writer = await connect(port)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + (body or b""))
            data = await reader.read()  # the server closes after its reply
        finally:
            writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.split(b"\r\n\r\n", 1)[-1], time.perf_counter() - t0


class SlowClients:
    """``n`` connections kept open: even ones send nothing, odd ones trickle ``PARTIAL_HEAD`` a byte
    every ``trickle_s``; when the server closes one (read deadline), it reconnects."""

    def __init__(self, port: int, n: int, trickle_s: float = 1.0):
        self.port, self.n, self.trickle_s = port, n, trickle_s
        self.connected = 0
        self.reconnects = 0
        self.failed_connects = 0
        self._tasks: list[asyncio.Task] = []

    async def _one(self, i: int) -> None:
        first = True
        while True:
            try:
                reader, writer = await connect(self.port)
            except OSError:
                self.failed_connects += 1
                await asyncio.sleep(0.2)
                continue
            self.reconnects += not first
            first = False
            self.connected += 1
            reading = asyncio.ensure_future(reader.read())  # until the server closes it
            try:
                if i % 2:
                    for b in PARTIAL_HEAD:
                        if reading.done():
                            break
                        writer.write(bytes([b]))
                        await asyncio.wait([reading], timeout=self.trickle_s)
                await reading
            except OSError:
                pass
            finally:
                reading.cancel()
                self.connected -= 1
                writer.transport.abort()

    async def start(self, settle_s: float = 10.0) -> None:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.n)]
        deadline = time.perf_counter() + settle_s
        while self.connected < self.n and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summary_ms(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    ms = [x * 1e3 for x in xs]
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 0.95),
        "max_ms": max(ms),
    }


def start_demo(args: list[str], env: dict[str, str] | None = None, wait_s: float = 300) -> tuple[subprocess.Popen, int]:
    """``python -m hypersd_demo --model embedded --port 0 ARGS``; (process, port) once it serves.
    Its output pipe is kept drained; RuntimeError with its last lines when it does not start."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypersd_demo", "--model", "embedded", "--port", "0", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.time() + wait_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError("the demo did not start:\n" + "".join(lines[-20:]))


async def measure(port: int, pid: int, n_slow: int, n_clients: int, per_client: int, singles: int) -> dict:
    peak = {"threads": thread_count(pid), "open": 0}
    errors: list[str] = []
    gen_ms: list[float] = []  # the server's own generation time per image
    sampling = True

    async def sample() -> None:
        while sampling:
            peak["threads"] = max(peak["threads"], thread_count(pid))
            await asyncio.sleep(0.05)

    async def normal(client: str, seq: int, into: list[float]) -> None:
        try:
            status, body, s = await request(
                port, "POST", "/generate", generate_body(f"a digit {seq % 10}", 0, seq, client)
            )
        except (OSError, TimeoutError) as e:
            errors.append(f"{client}: {type(e).__name__}")
            return
        if status == 200:
            into.append(s)
            gen_ms.append(json.loads(body)["ms"])
        else:
            errors.append(f"{client}: HTTP {status} {body[:60]!r}")

    async def open_now() -> int:
        status, body, _ = await request(port, "GET", "/info")
        return json.loads(body)["open_connections"] if status == 200 else -1

    sampler = asyncio.create_task(sample())
    idle: list[float] = []
    for i in range(3 + singles):  # the first three warm up
        await normal("idle", i + 1, idle if i >= 3 else [])
    threads_idle = thread_count(pid)

    slow = SlowClients(port, n_slow)
    t_slow = time.perf_counter()
    await slow.start()
    slow_connect_s = time.perf_counter() - t_slow
    single: list[float] = []
    for i in range(singles):  # one at a time, while the slow connections are held
        await normal("single", i + 1, single)
        peak["open"] = max(peak["open"], await open_now())
    held_during_single = slow.connected

    parallel: list[float] = []
    t0 = time.perf_counter()

    async def client(c: int) -> None:
        for k in range(per_client):
            await normal(f"c{c}", k + 1, parallel)

    await asyncio.gather(*(client(c) for c in range(n_clients)))
    parallel_wall = time.perf_counter() - t0
    peak["open"] = max(peak["open"], await open_now())
    held_after_parallel = slow.connected
    reconnects = slow.reconnects
    await slow.stop()
    sampling = False
    await sampler

    after: list[float] = []
    await normal("after", 1, after)
    status, body, _ = await request(port, "GET", "/info")
    info = json.loads(body) if status == 200 else {}
    return {
        "slow_connections": n_slow,
        "slow_connect_s": slow_connect_s,
        "slow_held_during_single": held_during_single,
        "slow_held_after_parallel": held_after_parallel,
        "slow_reconnects": reconnects,
        "clients": n_clients,
        "requests_per_client": per_client,
        "idle": summary_ms(idle),
        "single_during_slow": summary_ms(single),
        "parallel_during_slow": summary_ms(parallel),
        "parallel_wall_s": parallel_wall,
        "parallel_requests_per_s": len(parallel) / parallel_wall,
        "generate_ms_median": statistics.median(gen_ms) if gen_ms else None,
        "errors": errors,
        "threads_idle": threads_idle,
        "threads_peak": peak["threads"],
        "open_connections_peak": peak["open"],
        "refused_connections": info.get("refused_connections"),
        "up_after": status == 200 and len(after) == 1,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--slow", type=int, default=300, help="slow connections held open")
    p.add_argument("--clients", type=int, default=50, help="parallel clients sending normal requests")
    p.add_argument("--requests", type=int, default=4, help="requests per parallel client, one after another")
    p.add_argument("--singles", type=int, default=20, help="single requests made one at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the demo")
    p.add_argument("--steps", type=int, help="sampling steps (default: the demo's, 4 for the embedded teacher)")
    p.add_argument("--out", default=str(RESULTS_DIR / "demo_load.json"))
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    try:
        proc, port = start_demo(["--threads", str(args.threads)] + (["--steps", str(args.steps)] if args.steps else []))
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        r = asyncio.run(measure(port, proc.pid, args.slow, args.clients, args.requests, args.singles))
        r["process_alive_after"] = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res = {
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "command": "python -m benchmarks.demo_load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads_torch": args.threads,
        **r,
    }
    out = write_json(args.out, res)
    rows = [
        [what, s["n"], f"{s['p50_ms']:.0f}", f"{s['p95_ms']:.0f}", f"{s['max_ms']:.0f}"]
        for what, s in (
            ("one at a time, no load", r["idle"]),
            (f"one at a time, {args.slow} slow connections held", r["single_during_slow"]),
            (f"{args.clients} parallel clients, {args.slow} slow connections held", r["parallel_during_slow"]),
        )
        if s["n"]
    ]
    md = (
        f"Machine: {describe(res['machine'])}; load average before "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in res['load_average_after'])}\n\n"
        + markdown_table(["normal /generate requests", "n", "p50 ms", "p95 ms", "max ms"], rows)
        + f"\nerrors: {len(r['errors'])}{(' (' + '; '.join(r['errors'][:5]) + ')') if r['errors'] else ''}; "
        f"server threads: {r['threads_idle']} idle, peak {r['threads_peak']} under load; "
        f"open connections seen by the server: peak {r['open_connections_peak']}; "
        f"slow connections held: {r['slow_held_during_single']} during the single requests, "
        f"{r['slow_held_after_parallel']} after the parallel ones ({r['slow_reconnects']} reconnects after being cut off); "
        f"parallel throughput {r['parallel_requests_per_s']:.1f} requests/s "
        f"(the server's generation time per image: median {r['generate_ms_median']:.0f} ms, one at a time); "
        f"server up afterwards: {r['up_after'] and r['process_alive_after']}\n\n"
        f"Rerun: `{res['command'].strip()}`\n"
    )
    write_text(Path(out).with_suffix(".md"), md)
    print(md)
    return 0 if r["up_after"] and r["process_alive_after"] and not r["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
