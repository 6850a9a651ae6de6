"""Milliseconds per image with a ControlNet: SD1.5 (512², random weights, bf16) + an SD1.5-shaped
ControlNet (diffusers' ``ControlNetModel.from_unet``: the architecture of the scribble/canny
ControlNets) through hypersd_core's Generator, the path the demo's ``--controlnet`` takes.

    python -m benchmarks.controlnet_gpu            # GPU: results/controlnet_gpu.json + .md
    python -m benchmarks.controlnet_gpu --tiny     # CPU, tiny models, seconds: checks the code path

Per step count (1, 2, 4) and variant (eager; compiled = torch.compile reduce-overhead, CUDA graphs):
ms per image without control, with control (a fresh control image every call, as a drawing
canvas sends), and the ratio. Speed depends on shapes only, so random weights measure it.
--tiny runs the same code on the CPU with tiny models and dynamo's "eager" backend: the numbers
verify the code path and mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch

from .machine import describe, machine_info
from .realtime_gpu import TINY_NOTE, build_components, decoder_of, time_calls
from .report import RESULTS_DIR, markdown_table, write_json, write_text

STEPS = (1, 2, 4)


def controlnet_for(unet, device, dtype):
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet)  # SD's 8x conditioning embedding, 3-channel control image
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def run(args) -> dict:
    from hypersd_core.generate import Generator

    device = torch.device(args.device)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    spec, enc, unet, _vae, taesd, _, _ = build_components("sd15", args.tiny, device, dtype)
    net = controlnet_for(unet, device, dtype)
    res = spec.resolution
    g = torch.Generator().manual_seed(0)
    controls = [(torch.rand(3, res, res, generator=g) > 0.9).float().to(device) for _ in range(4)]
    rows = {}
    for variant in ("eager",) if args.no_compile else ("eager", "compiled"):
        for k in STEPS[: args.max_steps_index]:
            key = f"{variant} {k} step"
            row = {"variant": variant, "steps": k}
            try:
                kw = {}
                if variant == "compiled":
                    kw = {"compile": args.mode if args.backend == "inductor" else None, "backend": args.backend}
                gen = Generator(unet, enc, decoder_of(taesd), dtype=dtype, device=device, steps=k, controlnet=net, **kw)
                i = iter(range(10**9))
                plain = lambda: gen.generate("a scribble of a cat", height=res, width=res)  # noqa: E731
                ctrl = lambda: gen.generate(  # noqa: E731
                    "a scribble of a cat", height=res, width=res, control_image=controls[next(i) % 4]
                )
                for fn in (plain, ctrl):  # compile + capture outside the timing
                    for _ in range(3):
                        fn()
                row["no_control"] = time_calls(plain, device, args.warmup, args.iters)
                row["control"] = time_calls(ctrl, device, args.warmup, args.iters)
                row["control_over_plain"] = row["control"]["ms"] / row["no_control"]["ms"]
                row["compile_status"] = gen.stats.compile_status
                gen = None
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc(limit=4)
            rows[key] = row
            torch._dynamo.reset()
    info = machine_info()
    info["load_average"] = os.getloadavg()
    return {
        "machine": info,
        "tiny": args.tiny,
        "dtype": str(dtype).replace("torch.", ""),
        "resolution": res,
        "decoder": "TAESD (AutoencoderTiny)",
        "command": "python -m benchmarks.controlnet_gpu " + " ".join(args.argv),
        "rows": rows,
    }


def tables(res: dict) -> str:
    body = []
    for name, r in res["rows"].items():
        if "error" in r:
            body.append([name, "-", "-", "-", r["error"][:80]])
            continue
        body.append(
            [name, round(r["no_control"]["ms"], 2), round(r["control"]["ms"], 2), round(r["control_over_plain"], 2), ""]
        )
    head = (
        f"SD1.5 {res['resolution']}² + SD1.5 ControlNet, {res['dtype']}, batch 1, {res['decoder']}; "
        f"{describe(res['machine'])}; load average {', '.join(f'{x:.2f}' for x in res['machine']['load_average'])}"
    )
    note = [TINY_NOTE, ""] if res["tiny"] else []
    return "\n".join(
        [head, "", *note, markdown_table(["variant", "ms/image", "ms/image with control", "ratio", "error"], body)]
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.controlnet_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny models, dynamo eager backend: code-path check")
    p.add_argument("--device", default=None)
    p.add_argument("--mode", default="reduce-overhead")
    p.add_argument("--backend", default=None, help="default: inductor (GPU) / eager (--tiny)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.argv = argv
    args.device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.device.startswith("cpu") and not args.tiny:
        print("no CUDA GPU: run with --tiny for a CPU code-path check; the figures need a GPU", file=sys.stderr)
        return 2
    args.backend = args.backend or ("eager" if args.tiny else "inductor")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    args.iters = args.iters if args.iters is not None else (2 if args.tiny else 30)
    args.max_steps_index = 2 if args.tiny else len(STEPS)
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    res = run(args)
    out = Path(args.out or RESULTS_DIR / ("controlnet_gpu_tiny.json" if args.tiny else "controlnet_gpu.json"))
    write_json(out, res)
    write_text(out.with_suffix(".md"), tables(res))
    print(tables(res))
    return 0 if all("error" not in r for r in res["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
