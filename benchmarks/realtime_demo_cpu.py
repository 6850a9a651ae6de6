"""Images/s of the live demo's own path on this CPU: the demo server (hypersd_demo) on a loopback
port, sequential POST /generate requests as a typist makes them (every request a new prompt, so
each one pays a text-encoder call), embedded digits model.

    python -m benchmarks.realtime_demo_cpu [--steps 1 4] [--threads 1 2] [--requests 60]

Reports the server's generation time per image and the client's round-trip images/s (HTTP,
JSON, PNG encoding included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, write_json, write_text


def run(steps: int, threads: int, requests: int, model: str) -> dict:
    from hypersd_demo.server import DemoState, make_server
    from hypersd_demo.models import build_generator, load_components

    torch.set_num_threads(threads)
    comp = load_components(model)
    gen, _ = build_generator(comp, steps=steps, eta=0.0)
    state = DemoState(gen, comp.size, comp.description)
    server = make_server(state, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/generate"
    text = "a handwritten digit 7 written quickly with a thick pen " * 4
    gen_ms, rtt_ms = [], []
    try:
        for i in range(requests + 3):
            body = json.dumps({"prompt": text[: 8 + i], "seed": 0, "seq": i + 1, "client": "bench"}).encode()
            t0 = time.perf_counter()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                out = json.loads(r.read())
            if i >= 3:  # warm-up requests excluded
                rtt_ms.append((time.perf_counter() - t0) * 1e3)
                gen_ms.append(out["ms"])
    finally:
        server.shutdown()
        server.server_close()
    return {
        "model": comp.description,
        "size": comp.size,
        "steps": steps,
        "threads": threads,
        "requests": requests,
        "text_encoder_calls": gen.stats.text_encoder_calls,
        "generate_ms_median": statistics.median(gen_ms),
        "roundtrip_ms_median": statistics.median(rtt_ms),
        "images_per_s_generate": 1e3 / statistics.median(gen_ms),
        "images_per_s_roundtrip": len(rtt_ms) / (sum(rtt_ms) / 1e3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.realtime_demo_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--out", default=str(RESULTS_DIR / "realtime_demo_cpu.json"))
    args = p.parse_args(argv)
    rows = [run(s, t, args.requests, args.model) for s in args.steps for t in args.threads]
    res = {
        "machine": machine_info(),
        "load_average_1min": os.getloadavg()[0],
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    out = write_json(args.out, res)
    md = (
        f"Machine: {describe(res['machine'])}; 1-min load average at the end {res['load_average_1min']:.1f}\n\n"
        + markdown_table(
            ["steps", "threads", "generate ms", "images/s (generate)", "round trip ms", "images/s (round trip)"],
            [
                [
                    r["steps"],
                    r["threads"],
                    f"{r['generate_ms_median']:.1f}",
                    f"{r['images_per_s_generate']:.1f}",
                    f"{r['roundtrip_ms_median']:.1f}",
                    f"{r['images_per_s_roundtrip']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    write_text(Path(out).with_suffix(".md"), md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
