"""The real-time node inside ComfyUI against the core TorchCompileModel node and no compilation,
in the same run, on the same graph: random-weight full-size SD1.5 at 512², bf16, batch 1, one
step at cfg 1 (one UNet call) + full VAE decode — latent noise -> decoded IMAGE.

    COMFYUI_PATH=/path/to/ComfyUI python -m benchmarks.realtime_comfyui          # GPU
    COMFYUI_PATH=... python -m benchmarks.realtime_comfyui --tiny                # CPU code-path check

COMFYUI_PATH: a ComfyUI tree (v0.8.0+) with this repository linked into custom_nodes/. On a CPU
(--tiny) our node is a no-op by design and TorchCompileModel is skipped: the numbers verify the
code path and mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, write_json, write_text
from hypersd_models.specs import COMFY_SD15, COMFY_SD15_TINY

TINY_NOTE = "TINY MODE: a tiny UNet on the CPU; our node is a no-op there. The numbers mean nothing."


def load_comfyui(cpu: bool):
    """ComfyUI in this process, with its extra nodes and our pack loaded."""
    root = os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "nodes.py").is_file():
        raise SystemExit("set COMFYUI_PATH to a ComfyUI tree with this repository linked into custom_nodes/")
    root = Path(root).resolve()
    pack = next(
        (p for p in (root / "custom_nodes").iterdir() if p.resolve() == Path(__file__).resolve().parents[1]), None
    )
    if pack is None:
        raise SystemExit(f"link this repository into {root}/custom_nodes/ first")
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import utils.install_util  # noqa: F401  (before comfy/utils.py can shadow ComfyUI's utils package)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(pack))):
        raise SystemExit(f"ComfyUI failed to load the pack at {pack}")
    return nodes


def build_model(tiny: bool, device, dtype):
    """A random-weight SD1.5 MODEL (ModelPatcher) and full-size VAE as ComfyUI objects."""
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models as sm
    from diffusers import AutoencoderKL

    config = sm.SD15(dict(COMFY_SD15_TINY if tiny else COMFY_SD15))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, device=device) * 0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    torch.manual_seed(0)
    vae_sd = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).state_dict()
    vae = comfy.sd.VAE(sd=vae_sd, dtype=dtype)
    return patcher, vae


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_graph(model, vae, cond, noise):
    """The graph: one sampling step at cfg 1, then VAE decode."""
    import comfy.sample

    latent = comfy.sample.sample(
        model, noise, 1, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise), seed=0, disable_pbar=True
    )
    return vae.decode(latent)


def measure(model, vae, cond, noise, device, warmup, iters) -> dict:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(3):  # compile, CUDA-graph warm-up, record
        run_graph(model, vae, cond, noise)
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run_graph(model, vae, cond, noise)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run_graph(model, vae, cond, noise)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    return {
        "ms": ms,
        "images_per_s": 1e3 / ms,
        "first_3_runs_s": first,
        "iters": iters,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.realtime_comfyui", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("no CUDA GPU: run with --tiny for a CPU code-path check", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 5)
    iters = args.iters if args.iters is not None else (2 if args.tiny else 30)
    nodes = load_comfyui(cpu=not cuda)
    model, vae = build_model(args.tiny, device, dtype)
    res = 64 if args.tiny else 512
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, res // 8, res // 8, generator=g)
    cond = [[torch.randn(1, 77, 32 if args.tiny else 768, generator=g).to(dtype), {}]]
    compile_node = nodes.NODE_CLASS_MAPPINGS["TorchCompileModel"]
    ours = nodes.NODE_CLASS_MAPPINGS["HyperSDRealtimeCompile"]
    variants = {
        "no_compile": lambda: (model, vae),
        "TorchCompileModel_inductor": (lambda: (compile_node.execute(model, "inductor").args[0], vae))
        if cuda
        else None,
        "HyperSDRealtimeCompile": lambda: tuple(ours.execute(model, "reduce-overhead", 4, vae=vae).args),
    }
    results = {
        "machine": machine_info(),
        "tiny": args.tiny,
        "resolution": res,
        "dtype": str(dtype),
        "graph": "SD1.5 random weights, 1 step euler cfg 1 + full VAE decode, batch 1",
        "command": " ".join(sys.argv),
        "variants": {},
    }
    for name, make in variants.items():
        if make is None:
            results["variants"][name] = {
                "skipped": "TorchCompileModel needs a GPU here (inductor on a CPU takes minutes)"
            }
            continue
        try:
            m, v = make()
            results["variants"][name] = measure(m, v, cond, noise, device, warmup, iters)
        except Exception as exc:
            results["variants"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=4),
            }
        torch._dynamo.reset()
    out = Path(args.out or RESULTS_DIR / ("realtime_comfyui_tiny.json" if args.tiny else "realtime_comfyui.json"))
    write_json(out, results)
    rows = []
    for k, r in results["variants"].items():
        if "ms" in r:
            rows.append(
                [
                    k,
                    f"{r['ms']:.3g}",
                    f"{r['images_per_s']:.3g}",
                    f"{r['first_3_runs_s']:.3g}",
                    "-" if r["peak_gib"] is None else f"{r['peak_gib']:.3g}",
                ]
            )
        else:
            rows.append([k, r.get("skipped") or "ERROR " + r["error"][:100], "", "", ""])
    md = (
        f"Machine: {describe(results['machine'])}\n\n"
        + (f"**{TINY_NOTE}**\n\n" if args.tiny else "")
        + f"{results['graph']}, {res}², {dtype}\n\n"
        + markdown_table(["variant", "ms", "images/s", "first 3 runs s", "peak GiB"], rows)
    )
    write_text(out.with_suffix(".md"), md + "\n")
    print(md)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
