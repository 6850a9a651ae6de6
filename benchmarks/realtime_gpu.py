"""Real-time one-step generation on a GPU: prompt -> decoded image, batch 1, with a fresh prompt
encode per image, for random-weight full-size SD1.5 (512²) and SDXL (1024²) in bf16.

    python -m benchmarks.realtime_gpu                  # GPU: results/realtime_gpu.json + .md
    python -m benchmarks.realtime_gpu --models sd15    # one model
    python -m benchmarks.realtime_gpu --tiny           # CPU, tiny models, seconds: checks the code path
    # under a 10-minute limit per command, one model and section at a time, merged into one file:
    python -m benchmarks.realtime_gpu --models sd15 --sections components --merge
    python -m benchmarks.realtime_gpu --models sd15 --sections end_to_end --vae tiny --merge   (then --vae full)
    python -m benchmarks.realtime_gpu --models sd15 --sections diffusers --merge                (then sdxl)

Measured in one run per model:
- per component (text encoder(s), UNet, full VAE decode, TAESD decode): eager vs torch.compile
  (mode="reduce-overhead" = CUDA graphs) time, compile time, FLOPs and the distance from the
  hardware's bf16 FLOP limit;
- end to end through hypersd_core.generate.Generator: eager / compiled x full VAE / tiny VAE,
  images/s, compile+capture time, re-capture time for a new resolution, peak memory;
- diffusers' StableDiffusion(XL)Pipeline with TCDScheduler, 1 step, eager, same components.

--tiny runs the same code on the CPU with tiny models and dynamo's "eager" backend in place of
inductor/CUDA graphs: the numbers verify the code path and mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from hypersd_core.generate import Generator, PromptEncoder

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, write_json, write_text
from hypersd_models.specs import SPECS, build_unet

TINY_NOTE = "TINY MODE: tiny random models on the CPU; the numbers verify the code path and mean nothing."

CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
CLIP_G = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
CLIP_TINY = dict(
    vocab_size=49408,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    projection_dim=32,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    force_upcast=False,
)
VAE_TINY = dict(VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)
TAESD_TINY = dict(
    encoder_block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    num_encoder_blocks=(1, 1, 1, 1),
    num_decoder_blocks=(1, 1, 1, 1),
)
SCALING = {"sd15": 0.18215, "sdxl": 0.13025}
# Dense bf16 tensor-core peak (TFLOP/s) and memory bandwidth (TB/s) from the vendors' data sheets.
PEAKS = (
    ("H200", 989.4, 4.8),
    ("H100 PCIe", 756.0, 2.0),
    ("H100 NVL", 835.0, 3.9),
    ("H100", 989.4, 3.35),
    ("A100", 312.0, 2.0),
    ("L40S", 362.0, 0.864),
    ("4090", 165.2, 1.008),
)


# -- models ---------------------------------------------------------------------------------------
def build_components(name: str, tiny: bool, device, dtype):
    """(PromptEncoder, unet, full VAE, TAESD, tokenizers, text encoders) with random weights."""
    from diffusers import AutoencoderKL, AutoencoderTiny
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from hypersd_models.embedded import load_tokenizer

    spec = SPECS[f"{name}-tiny" if tiny else name]
    tok = load_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        if name == "sd15":
            encs = [CLIPTextModel(CLIPTextConfig(**(dict(CLIP_TINY, hidden_size=32) if tiny else CLIP_L)))]
        else:
            encs = [
                CLIPTextModel(CLIPTextConfig(**(CLIP_TINY if tiny else CLIP_L))),
                CLIPTextModelWithProjection(CLIPTextConfig(**(CLIP_TINY if tiny else CLIP_G))),
            ]
        vae = AutoencoderKL(**(VAE_TINY if tiny else VAE), scaling_factor=SCALING[name], sample_size=spec.resolution)
        taesd = AutoencoderTiny(**(TAESD_TINY if tiny else {}))
    unet = build_unet(spec, device=device, dtype=dtype)
    mods = [*encs, vae, taesd]
    for m in mods:
        m.to(dtype=dtype).eval().requires_grad_(False)
    enc = PromptEncoder([tok] * len(encs), encs, "sd15" if name == "sd15" else "sdxl")
    return spec, enc, unet, vae, taesd, [tok] * len(encs), encs


def decoder_of(vae):
    from hypersd_models.loading import LatentDecoder

    return LatentDecoder(vae)


# -- timing helpers ---------------------------------------------------------------------------------
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, warmup: int, iters: int) -> dict:
    """Wall time per call (synchronised), median and spread, in ms."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "iters": iters}


def reset_peak(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def device_peaks(device, override_tflops=None) -> dict:
    if device.type != "cuda":
        return {"name": "cpu", "bf16_tflops": override_tflops, "tb_per_s": None}
    name = torch.cuda.get_device_name(device)
    for key, tflops, bw in PEAKS:
        if key in name:
            return {"name": name, "bf16_tflops": override_tflops or tflops, "tb_per_s": bw}
    return {"name": name, "bf16_tflops": override_tflops, "tb_per_s": None}


def limits(row: dict, flops: float, weight_bytes: float, peaks: dict) -> dict:
    """FLOP-limit floor (ms), achieved TFLOP/s, share of peak; weight-read floor at full bandwidth."""
    row["tflop"] = flops / 1e12
    if peaks.get("bf16_tflops"):
        floor = flops / (peaks["bf16_tflops"] * 1e12) * 1e3
        row["flop_floor_ms"] = floor
        for key in ("eager", "compiled"):
            ms = row.get(key, {}).get("ms")
            if ms:
                row[key]["tflops_achieved"] = flops / (ms / 1e3) / 1e12
                row[key]["share_of_peak"] = floor / ms
    if peaks.get("tb_per_s"):
        row["weight_read_floor_ms"] = weight_bytes / (peaks["tb_per_s"] * 1e12) * 1e3
    return row


def compile_fn(fn, args):
    """torch.compile for the run: CUDA graphs (reduce-overhead) on a GPU, dynamo-eager with --tiny."""
    kw = dict(dynamic=False)
    if args.backend == "inductor":
        kw["mode"] = args.mode
    else:
        kw["backend"] = args.backend
    return torch.compile(fn, **kw)


def _mark(device, args):
    if device.type == "cuda" and args.backend == "inductor" and args.mode in ("reduce-overhead", "max-autotune"):
        torch.compiler.cudagraph_mark_step_begin()


# -- sections -------------------------------------------------------------------------------------
def component_rows(name, parts, device, dtype, args, peaks) -> dict:
    """Eager vs compiled per component, compile time, FLOPs and floors."""
    spec, enc, unet, vae, taesd, toks, encs = parts
    lat = spec.resolution // 8
    z = torch.randn(1, 4, lat, lat, device=device, dtype=dtype)
    t = torch.full((1,), 999.0, device=device)
    ids = [i.to(device) for i in enc.tokenize("a photo of an astronaut riding a horse")]
    with torch.no_grad():
        cond = enc.encode_ids(*ids)
    added = None
    if name == "sdxl":
        r = spec.resolution
        added = {
            "text_embeds": cond["text_embeds"].to(dtype),
            "time_ids": torch.tensor([[r, r, 0, 0, r, r]], device=device, dtype=dtype),
        }
    ehs = cond["encoder_hidden_states"].to(dtype)
    calls = {
        "text_encoder": (lambda: enc.encode_ids(*ids), encs),
        "unet": (lambda: unet(z, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)[0], [unet]),
        "vae_decode": (lambda: vae.decode(z, return_dict=False)[0], [vae.decoder, vae.post_quant_conv]),
        "taesd_decode": (lambda: taesd.decode(z, return_dict=False)[0], [taesd.decoder]),
    }
    rows = {}
    for comp, (fn, mods) in calls.items():
        row = {}
        try:
            with torch.no_grad():
                reset_peak(device)
                row["eager"] = time_calls(fn, device, args.warmup, args.iters)
                row["eager"]["peak_gib"] = peak_gib(device)
                flops = count_flops(fn)
                if args.no_compile:
                    weights = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
                    rows[comp] = limits(row, flops, weights, peaks)
                    continue
                compiled = compile_fn(fn, args)

                def run():
                    _mark(device, args)
                    return compiled()

                t0 = time.perf_counter()
                for _ in range(3):  # compile, CUDA-graph warm-up, record
                    run()
                sync(device)
                row["compile_s"] = time.perf_counter() - t0
                reset_peak(device)
                row["compiled"] = time_calls(run, device, args.warmup, args.iters)
                row["compiled"]["peak_gib"] = peak_gib(device)
                row["speedup"] = row["eager"]["ms"] / row["compiled"]["ms"]
            weights = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
            rows[comp] = limits(row, flops, weights, peaks)
        except Exception as exc:  # record and go on: one failure must not lose the other figures
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=4)
            rows[comp] = row
        torch._dynamo.reset()
    return rows


def _prompts(tag: str):
    i = 0
    while True:
        i += 1
        yield f"{tag} prompt {i}: a photo of a cat number {i} wearing a hat"


def e2e_rows(name, parts, device, dtype, args, peaks, component_flops) -> dict:
    """Generator end to end: fresh prompt per image; eager/compiled x full/tiny VAE."""
    spec, enc, unet, vae, taesd, _, _ = parts
    res = spec.resolution
    rows = {}
    for vae_name, dec_module in (("full_vae", vae), ("tiny_vae", taesd)):
        if vae_name.split("_")[0] not in args.vae:
            continue
        for variant in ("eager",) if args.no_compile else ("eager", "compiled"):
            key = f"{variant}_{vae_name}"
            row = {}
            try:
                reset_peak(device)
                kw = {}
                if variant == "compiled":
                    kw = {"compile": args.mode if args.backend == "inductor" else None, "backend": args.backend}
                gen = Generator(
                    unet,
                    enc,
                    decoder_of(dec_module),
                    dtype=dtype,
                    device=device,
                    sdxl=name == "sdxl",
                    steps=1,
                    timestep=999,
                    **kw,
                )
                prompts = _prompts(key)
                t0 = time.perf_counter()
                for _ in range(3):
                    gen.generate(next(prompts), height=res, width=res)
                row["first_3_calls_s"] = time.perf_counter() - t0
                before = gen.stats.text_encoder_calls
                row["fresh_prompt"] = time_calls(
                    lambda: gen.generate(next(prompts), height=res, width=res), device, args.warmup, args.iters
                )
                row["text_encoder_calls_per_image"] = (gen.stats.text_encoder_calls - before) / (
                    args.warmup + args.iters
                )
                row["fresh_prompt"]["images_per_s"] = 1e3 / row["fresh_prompt"]["ms"]
                row["cached_prompt"] = time_calls(
                    lambda: gen.generate("same prompt", height=res, width=res), device, args.warmup, args.iters
                )
                row["cached_prompt"]["images_per_s"] = 1e3 / row["cached_prompt"]["ms"]
                row["peak_gib"] = peak_gib(device)
                row["compile_status"] = gen.stats.compile_status
                if variant == "compiled":
                    h2 = res * 3 // 4  # a new resolution: dynamo recompiles, CUDA graphs re-record
                    t0 = time.perf_counter()
                    for _ in range(3):
                        gen.generate(next(prompts), height=h2, width=res)
                    row["recapture_s"] = time.perf_counter() - t0
                    row["recapture_shape"] = [h2, res]
                    row["back_to_first_shape"] = time_calls(
                        lambda: gen.generate(next(prompts), height=res, width=res), device, 1, max(3, args.iters // 4)
                    )
                flops = (
                    component_flops.get("text_encoder", 0)
                    + component_flops.get("unet", 0)
                    + component_flops.get("vae_decode" if vae_name == "full_vae" else "taesd_decode", 0)
                )
                if peaks.get("bf16_tflops") and flops:
                    floor = flops / (peaks["bf16_tflops"] * 1e12) * 1e3
                    row["flop_floor_ms"] = floor
                    row["share_of_peak"] = floor / row["fresh_prompt"]["ms"]
                gen = None  # free it before the next variant
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc(limit=4)
            rows[key] = row
            torch._dynamo.reset()
    return rows


def diffusers_row(name, parts, device, dtype, args) -> dict:
    """diffusers' pipeline with TCDScheduler, 1 step, no guidance, eager, fresh prompt per image."""
    import diffusers

    spec, enc, unet, vae, _, toks, encs = parts
    row = {}
    try:
        sched = diffusers.TCDScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="trailing",
            steps_offset=1,
        )
        if name == "sd15":
            pipe = diffusers.StableDiffusionPipeline(
                vae=vae,
                text_encoder=encs[0],
                tokenizer=toks[0],
                unet=unet,
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=encs[0],
                text_encoder_2=encs[1],
                tokenizer=toks[0],
                tokenizer_2=toks[1],
                unet=unet,
                scheduler=sched,
            )
        pipe.set_progress_bar_config(disable=True)
        res = spec.resolution
        prompts = _prompts("diffusers")
        gen = torch.Generator(device).manual_seed(0)

        def run():
            return pipe(
                next(prompts),
                num_inference_steps=1,
                guidance_scale=0.0,
                height=res,
                width=res,
                generator=gen,
                output_type="np",
            ).images

        reset_peak(device)
        with torch.no_grad():
            row["fresh_prompt"] = time_calls(run, device, args.warmup, args.iters)
        row["fresh_prompt"]["images_per_s"] = 1e3 / row["fresh_prompt"]["ms"]
        row["peak_gib"] = peak_gib(device)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=4)
    return row


SECTIONS = ("components", "end_to_end", "diffusers")
TARGETS = {  # issue 8: images/s (sd15) and ms (sdxl) on an H100
    "sd15": {"tiny_vae_images_per_s": 150, "full_vae_images_per_s": 80},
    "sdxl": {"tiny_vae_ms": 25, "full_vae_ms": 40},
}


def verdicts(name: str, e2e: dict) -> dict:
    out = {}
    for vae_name in ("tiny_vae", "full_vae"):
        r = e2e.get(f"compiled_{vae_name}", {}).get("fresh_prompt")
        if not r:
            continue
        if name == "sd15":
            target = TARGETS[name][f"{vae_name}_images_per_s"]
            out[vae_name] = {
                "images_per_s": r["images_per_s"],
                "target_images_per_s": target,
                "met": r["images_per_s"] >= target,
            }
        else:
            target = TARGETS[name][f"{vae_name}_ms"]
            out[vae_name] = {"ms": r["ms"], "target_ms": target, "met": r["ms"] <= target}
    return out


# -- report ---------------------------------------------------------------------------------------
def _f(v, d=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{d}g}"
    return str(v)


def tables(results: dict) -> str:
    md = [f"Machine: {describe(results['machine'])}\n", f"Peaks: {results['peaks']}\n"]
    if results.get("tiny"):
        md.append(f"**{TINY_NOTE}**\n")
    for name, r in results["models"].items():
        md.append(f"\n### {name} ({r['resolution']}², {results['dtype']}, batch 1, one step)\n")
        rows = []
        for comp, c in r.get("components", {}).items():
            if "error" in c:
                rows.append([comp, "ERROR " + c["error"][:80], "", "", "", "", ""])
                continue
            rows.append(
                [
                    comp,
                    _f(c["eager"]["ms"]),
                    _f(c.get("compiled", {}).get("ms")),
                    _f(c.get("speedup")),
                    _f(c.get("compile_s")),
                    _f(c.get("tflop")),
                    _f(c.get("flop_floor_ms")),
                ]
            )
        md.append(
            markdown_table(
                ["component", "eager ms", "compiled ms", "speedup", "compile s", "TFLOP", "FLOP floor ms"], rows
            )
        )
        rows = []
        for key, e in r.get("end_to_end", {}).items():
            if "error" in e:
                rows.append([key, "ERROR " + e["error"][:80], "", "", "", "", ""])
                continue
            fp, cp = e["fresh_prompt"], e["cached_prompt"]
            rows.append(
                [
                    key,
                    _f(fp["ms"]),
                    _f(fp["images_per_s"]),
                    _f(cp["images_per_s"]),
                    _f(e.get("first_3_calls_s")),
                    _f(e.get("recapture_s")),
                    _f(e.get("peak_gib")),
                ]
            )
        d = r.get("diffusers_tcd", {})
        rows.append(
            [
                "diffusers TCD pipeline (eager)",
                _f(d.get("fresh_prompt", {}).get("ms")),
                _f(d.get("fresh_prompt", {}).get("images_per_s")),
                "-",
                "-",
                "-",
                _f(d.get("peak_gib")),
            ]
        )
        md.append(
            "\n"
            + markdown_table(
                [
                    "prompt -> image",
                    "ms (fresh prompt)",
                    "images/s",
                    "images/s (cached)",
                    "first 3 calls s",
                    "re-capture s",
                    "peak GiB",
                ],
                rows,
            )
        )
        md.append(f"\nTargets: {r.get('targets', '-')}\n")
    return "\n".join(md) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.realtime_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny models, dynamo eager backend: code-path check")
    p.add_argument("--device", default=None)
    p.add_argument("--mode", default="reduce-overhead", help="torch.compile mode for the compiled variants")
    p.add_argument("--backend", default=None, help="default: inductor (GPU) / eager (--tiny)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="run some sections only (end_to_end needs the components' FLOPs: runs them if absent)",
    )
    p.add_argument(
        "--vae",
        nargs="+",
        default=["full", "tiny"],
        choices=["full", "tiny"],
        help="end_to_end: which decoders (split a long run in two calls)",
    )
    p.add_argument("--merge", action="store_true", help="add to the existing --out file instead of replacing it")
    p.add_argument(
        "--tuned",
        action="store_true",
        help="fused QKV + channels-last UNet/VAE and diffusers' inductor settings (all variants)",
    )
    p.add_argument("--no-compile", action="store_true", help="eager variants only (fast CI check of --tiny)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--out", default=None, help="JSON path (default results/realtime_gpu[_tiny].json)")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    args.backend = args.backend or ("eager" if args.tiny else "inductor")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    args.iters = args.iters if args.iters is not None else (3 if args.tiny else 30)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and not args.tiny:
        print("no CUDA GPU: run with --tiny for a CPU code-path check; the figures need a GPU", file=sys.stderr)
        return 2
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    peaks = device_peaks(device, args.peak_tflops)
    results = {
        "machine": machine_info(),
        "tiny": args.tiny,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": args.mode,
        "backend": args.backend,
        "peaks": peaks,
        "command": " ".join(sys.argv),
        "models": {},
    }
    out = Path(args.out or RESULTS_DIR / ("realtime_gpu_tiny.json" if args.tiny else "realtime_gpu.json"))
    if args.merge and out.is_file():  # sections run as separate commands add up in one file
        previous = json.loads(out.read_text())
        results["models"] = previous.get("models", {})
        results["commands"] = previous.get("commands", []) + [results["command"]]
    if args.tuned:
        from hypersd_models.tuning import inductor_tuning

        inductor_tuning()
    results["tuned"] = args.tuned
    for name in args.models:
        parts = build_components(name, args.tiny, device, dtype)
        if args.tuned:
            from hypersd_models.tuning import tune_modules

            tune_modules(parts[2], parts[3])
        r = results["models"].setdefault(name, {})
        r["resolution"] = parts[0].resolution
        if "components" in args.sections or "end_to_end" in args.sections:
            if "components" in args.sections or "components" not in r:
                r["components"] = component_rows(name, parts, device, dtype, args, peaks)
            flops = {k: v.get("tflop", 0) * 1e12 for k, v in r["components"].items()}
        if "end_to_end" in args.sections:
            r["end_to_end"] = {**r.get("end_to_end", {}), **e2e_rows(name, parts, device, dtype, args, peaks, flops)}
            r["targets"] = verdicts(name, r["end_to_end"]) if not args.tiny else "n/a (tiny)"
        if "diffusers" in args.sections:
            r["diffusers_tcd"] = diffusers_row(name, parts, device, dtype, args)
        del parts
        reset_peak(device)
    write_json(out, results)
    write_text(out.with_suffix(".md"), tables(results))
    print(tables(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
