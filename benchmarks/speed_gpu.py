"""Speed and memory of Hyper-SD inference and training on a GPU, against diffusers' own paths,
with random-weight full-size SD1.5 (512²) and SDXL (1024²) UNets in bf16.

    python -m benchmarks.speed_gpu                       # GPU: all sections, results/speed_gpu.json
    python -m benchmarks.speed_gpu --sections inference  # one section (inference|compile|training|scaling)
    python -m benchmarks.speed_gpu --tiny                # CPU, tiny UNets: checks the code paths only

Inference: hypersd_core's TSCD sampler (UNetNet + DiscreteVPDenoiser + sample_tscd) vs diffusers'
pipeline with TCDScheduler, same noise, same timesteps, 1/2/4/8 steps, cfg 1, in one run. UNet
time is taken with forward hooks (CUDA events on a GPU) identically for both, so "overhead" =
wall time - UNet time; the sampler math alone is also timed with a zero-cost model.
Compile: torch._dynamo.explain of the sampler loop (graph breaks and their reasons), then on a GPU
torch.compile(fullgraph=True, mode="reduce-overhead") and a run under CUDA sync-debug mode.
Training: the trainer's real TSCD stage step (train/stages/tscd.py) vs an LCM-LoRA step built as
diffusers' example does (benchmarks/lcm_baseline.py), LoRA rank 64, same batch, same run.
Scaling: TSCD step throughput and peak memory over batch size x resolution.

--tiny numbers are CPU timings of tiny models: they verify the code path and mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from hypersd_core.generate import UNetNet
from hypersd_core.parameterization import DiscreteVPDenoiser
from hypersd_core.samplers import get_sigmas_tscd, sample_tscd, seeded_noise_sampler
from hypersd_core.schedule import VPSchedule, unit_noise_to_ve

from .machine import describe, machine_info
from .report import RESULTS_DIR, markdown_table, sampler_share_table, write_json, write_text
from hypersd_models.specs import SPECS, ModelSpec, build_unet, conditioning

TINY_NOTE = "TINY MODE: tiny random UNets on the CPU; the numbers verify the code path and mean nothing."


# -- timing -------------------------------------------------------------------------------------
class UNetTimer:
    """Counts a UNet's calls and times each with CUDA events (GPU) or perf_counter (CPU), via hooks."""

    def __init__(self, unet: torch.nn.Module):
        self.unet, self.cuda = unet, next(unet.parameters()).is_cuda
        self.calls, self._pending, self._cpu_s = 0, [], 0.0
        self._hooks = [unet.register_forward_pre_hook(self._pre), unet.register_forward_hook(self._post)]

    def _pre(self, _m, _inp):
        self.calls += 1
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pending.append([ev, None])
        else:
            self._t0 = time.perf_counter()

    def _post(self, _m, _inp, _out):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pending[-1][1] = ev
        else:
            self._cpu_s += time.perf_counter() - self._t0

    def reset(self):
        self.calls, self._pending, self._cpu_s = 0, [], 0.0

    def seconds(self) -> float:
        """Total UNet time since the last reset (synchronises on a GPU)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self._pending) / 1000.0
        return self._cpu_s

    def remove(self):
        for h in self._hooks:
            h.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Mean wall seconds of fn() over ``iters`` runs after ``warmup`` runs (synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def event_timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Mean device seconds of fn() measured with CUDA events (perf_counter on a CPU)."""
    if device.type != "cuda":
        return timed(fn, device, warmup, iters)
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0 / iters


# -- inference ----------------------------------------------------------------------------------
def device_noise_sampler(x: torch.Tensor, seed: int):
    """Per-step noise drawn on x's device (no host->device copies inside the loop)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def hypersd_sampler(unet, spec: ModelSpec, cond, added, eta: float, schedule: VPSchedule):
    """(run(noise, steps, noise_sampler) -> x0, denoiser) through hypersd_core only."""
    net = UNetNet(unet, next(unet.parameters()).dtype)
    model = DiscreteVPDenoiser(net, schedule, "epsilon")
    extra = {"encoder_hidden_states": cond}
    if added:
        extra.update(text_embeds=added["text_embeds"], time_ids=added["time_ids"])

    def run(z, steps: int, noise_sampler=None):
        sigmas = get_sigmas_tscd(steps, schedule, spacing="tcd").to(z.device)
        x = unit_noise_to_ve(z.float(), sigmas[0])
        ns = noise_sampler(x) if noise_sampler else seeded_noise_sampler(x, 0)
        return sample_tscd(
            model, x, sigmas, extra_args=extra, eta=eta, noise_sampler=ns, schedule=schedule, disable=True
        )

    return run, model, extra


def diffusers_pipeline(unet, spec: ModelSpec):
    """diffusers' SD/SDXL pipeline with TCDScheduler around ``unet`` (no text encoders: embeddings are passed)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, TCDScheduler

    sched = TCDScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
    # A minimal 4-level VAE gives the pipeline its scale factor 8; it is never run (output_type="latent").
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    ).to(next(unet.parameters()).device)
    if spec.pooled_dim:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
            unet=unet,
            scheduler=sched,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, spec: ModelSpec, z, cond, added, steps: int, eta: float, resolution: int):
    px = spec.latent_size(resolution) * pipe.vae_scale_factor  # pixel-space models: latents = pixels
    kw = dict(
        prompt_embeds=cond,
        num_inference_steps=steps,
        guidance_scale=1.0,
        eta=eta,
        latents=z,
        output_type="latent",
        return_dict=False,
        height=px,
        width=px,
        generator=torch.Generator(device=z.device).manual_seed(0),
    )
    if spec.pooled_dim:
        kw["pooled_prompt_embeds"] = added["text_embeds"]
    return pipe(**kw)[0]


def inference_section(
    spec: ModelSpec, *, device, dtype, resolution: int, steps_list, eta: float, warmup: int, iters: int
) -> list[dict]:
    schedule = VPSchedule.scaled_linear()
    unet = build_unet(spec, device=device, dtype=dtype)
    cond, added = conditioning(spec, 1, device, dtype, resolution)
    lat, ch = spec.latent_size(resolution), spec.config["in_channels"]
    z = torch.randn(1, ch, lat, lat, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    ours, _, _ = hypersd_sampler(unet, spec, cond, added, eta, schedule)
    pipe = diffusers_pipeline(unet, spec)
    timer = UNetTimer(unet)
    rows = []
    try:
        # UNet alone, for the per-call cost both paths pay.
        x_vp = z.float()
        t = torch.tensor([999], device=device)
        unet_kw = {"added_cond_kwargs": added} if added else {}
        unet_call = lambda: unet(x_vp.to(dtype), t, encoder_hidden_states=cond, **unet_kw)  # noqa: E731
        with torch.no_grad():
            unet_s = event_timed(unet_call, device, warmup, iters)
        for steps in steps_list:
            for name, fn in (
                ("hypersd_core sample_tscd (seeded CPU noise)", lambda: ours(z, steps)),
                (
                    "hypersd_core sample_tscd (device noise)",
                    lambda: ours(z, steps, lambda x: device_noise_sampler(x, 0)),
                ),
                (
                    "diffusers pipeline + TCDScheduler",
                    lambda: run_pipeline(pipe, spec, z, cond, added, steps, eta, resolution),
                ),
            ):
                with torch.no_grad():
                    fn()  # warm-up (allocator, cuDNN autotune)
                    timer.reset()
                    wall = timed(fn, device, warmup, iters)
                    unet_total = timer.seconds() / (warmup + iters)
                    calls = timer.calls / (warmup + iters)
                rows.append(
                    dict(
                        model=spec.name,
                        resolution=resolution,
                        steps=steps,
                        path=name,
                        batch=1,
                        seconds_per_image=wall,
                        unet_calls_per_image=calls,
                        unet_seconds_per_image=unet_total,
                        overhead_seconds_per_image=wall - unet_total,
                        overhead_share=(wall - unet_total) / wall,
                        unet_call_seconds_isolated=unet_s,
                    )
                )
            rows.append(sampler_math_row(spec, resolution, steps, eta, schedule, device, warmup, iters, unet_s))
    finally:
        timer.remove()
    unet = pipe = None  # free them
    return rows


def sampler_math_row(spec, resolution, steps, eta, schedule, device, warmup, iters, unet_s) -> dict:
    """The sampler's own math per step, timed with a zero-cost model (CUDA events on a GPU)."""
    lat = spec.latent_size(resolution)
    x = torch.randn(1, spec.config["in_channels"], lat, lat, device=device)
    x0 = torch.zeros_like(x)
    sigmas = get_sigmas_tscd(steps, schedule, spacing="tcd").to(device)
    ns = device_noise_sampler(x, 0)
    null_model = lambda xx, s: x0  # noqa: E731
    s_math = (
        event_timed(
            lambda: sample_tscd(null_model, x, sigmas, eta=eta, noise_sampler=ns, schedule=schedule, disable=True),
            device,
            warmup,
            iters,
        )
        / steps
    )
    eps0 = torch.zeros_like(x)
    wrapper = DiscreteVPDenoiser(lambda xv, t: eps0, schedule, "epsilon")
    s_wrap = (
        event_timed(
            lambda: sample_tscd(wrapper, x, sigmas, eta=eta, noise_sampler=ns, schedule=schedule, disable=True),
            device,
            warmup,
            iters,
        )
        / steps
    )
    return dict(
        model=spec.name,
        resolution=resolution,
        steps=steps,
        path="sampler math alone (per step)",
        sampler_seconds_per_step=s_math,
        sampler_plus_wrapper_seconds_per_step=s_wrap,
        unet_call_seconds_isolated=unet_s,
        sampler_share_of_step=s_math / (s_math + unet_s),
        sampler_plus_wrapper_share_of_step=s_wrap / (s_wrap + unet_s),
    )


# -- compile ------------------------------------------------------------------------------------
def compile_section(spec: ModelSpec, *, device, dtype, resolution: int, steps: int, eta: float, full: bool) -> dict:
    """Is the sampler loop one graph? torch.compile(fullgraph=True) (raises on any graph break) and
    torch._dynamo.explain (counts breaks) on a stand-in conv denoiser, and with the real UNet when
    ``full``; on a GPU also inductor + CUDA graphs, timing, and a run under CUDA sync-debug mode."""
    import torch._dynamo as dynamo

    schedule = VPSchedule.scaled_linear()
    out: dict = {"model": spec.name, "steps": steps, "eta": eta}
    ch, lat = spec.config["in_channels"], spec.latent_size(resolution)
    x = torch.randn(1, ch, lat, lat, device=device)
    sigmas = get_sigmas_tscd(steps, schedule, spacing="tcd").to(device)
    step_noise = torch.randn((steps,) + tuple(x.shape), device=device)

    def loop_fn(model, extra):
        def loop(xx, sig):
            it = iter(range(steps))
            return sample_tscd(
                model,
                xx,
                sig,
                extra_args=extra,
                eta=eta,
                noise_sampler=lambda s, sn: step_noise[next(it)],
                schedule=schedule,
                disable=True,
            )

        return loop

    def check(loop) -> dict:
        dynamo.reset()
        e = dynamo.explain(loop)(x, sigmas)
        res = {
            "explain_graph_count": e.graph_count,
            "explain_graph_break_count": e.graph_break_count,
            "explain_break_reasons": sorted({str(b.reason).splitlines()[0][:160] for b in e.break_reasons}),
        }
        dynamo.reset()
        try:
            got = torch.compile(loop, fullgraph=True, backend="eager")(x, sigmas)
            ref = loop(x, sigmas)
            res["fullgraph_compile"] = "ok"
            res["fullgraph_max_abs_diff_vs_eager"] = float((got.float() - ref.float()).abs().max())
        except Exception as exc:  # the failure is the result
            res["fullgraph_compile"] = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return res

    conv = torch.nn.Conv2d(ch, ch, 3, padding=1).to(device)
    standin = DiscreteVPDenoiser(lambda xv, t: conv(xv), schedule, "epsilon")
    with torch.no_grad():
        out["sampler_standin_denoiser"] = check(loop_fn(standin, {}))
        if full:
            unet = build_unet(spec, device=device, dtype=dtype)
            cond, added = conditioning(spec, 1, device, dtype, resolution)
            _, model, extra = hypersd_sampler(unet, spec, cond, added, eta, schedule)
            out["sampler_with_unet"] = check(loop_fn(model, extra))
            if device.type == "cuda":
                out.update(_compiled_run(model, extra, x, sigmas, eta, schedule, device))
            del unet
    dynamo.reset()
    return out


def _compiled_run(model, extra, x, sigmas, eta, schedule, device) -> dict:
    """fullgraph compile with CUDA graphs; eager vs compiled latency; host syncs under sync-debug mode."""
    step_noise = torch.randn((len(sigmas),) + tuple(x.shape), device=device)

    def loop(xx):
        it = iter(range(len(sigmas)))
        return sample_tscd(
            model,
            xx,
            sigmas,
            extra_args=extra,
            eta=eta,
            noise_sampler=lambda s, sn: step_noise[next(it)],
            schedule=schedule,
            disable=True,
        )

    res: dict = {}
    with torch.no_grad():
        res["eager_seconds"] = timed(lambda: loop(x), device, 2, 5)
        try:
            t0 = time.perf_counter()
            fn = torch.compile(loop, fullgraph=True, mode="reduce-overhead")
            for _ in range(3):
                torch.compiler.cudagraph_mark_step_begin()
                fn(x)
            _sync(device)
            res["compile_seconds"] = time.perf_counter() - t0

            def call():
                torch.compiler.cudagraph_mark_step_begin()
                return fn(x)

            res["compiled_cudagraph_seconds"] = timed(call, device, 2, 10)
            torch.cuda.set_sync_debug_mode("error")
            try:
                call()
                res["host_syncs_in_compiled_loop"] = "none (sync debug mode 'error' raised nothing)"
            finally:
                torch.cuda.set_sync_debug_mode(0)
        except Exception as e:  # reported, not hidden
            res["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return res


# -- training -----------------------------------------------------------------------------------
def training_section(
    spec: ModelSpec,
    *,
    device,
    mixed_precision,
    dtype,
    batch: int,
    resolution: int,
    rank: int,
    methods,
    gradient_checkpointing,
    warmup: int,
    iters: int,
) -> list[dict]:
    from .train_harness import measure_method

    rows = []
    for gc in gradient_checkpointing:
        for method in methods:
            try:
                r = measure_method(
                    method,
                    spec,
                    batch=batch,
                    resolution=resolution,
                    device=device,
                    mixed_precision=mixed_precision,
                    weight_dtype=dtype,
                    rank=rank,
                    gradient_checkpointing=gc,
                    warmup=warmup,
                    iters=iters,
                    segments=2 if method == "tscd_adv" else 8,
                    adv_weight=0.1,
                )
            except Exception as e:  # a failing method is a result: the table says so
                r = dict(
                    method=method,
                    model=spec.name,
                    batch=batch,
                    resolution=resolution,
                    gradient_checkpointing=gc,
                    error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                )
                traceback.print_exc(file=sys.stderr)
            rows.append(r)
            print(f"  training {spec.name} {method} gc={gc}: {_short(r)}", flush=True)
    return rows


def scaling_section(
    spec: ModelSpec,
    *,
    device,
    mixed_precision,
    dtype,
    batches,
    resolutions,
    rank: int,
    gradient_checkpointing: bool,
    warmup: int,
    iters: int,
) -> list[dict]:
    from .train_harness import measure_method

    rows = []
    for res in resolutions:
        for b in batches:
            try:
                r = measure_method(
                    "tscd",
                    spec,
                    batch=b,
                    resolution=res,
                    device=device,
                    mixed_precision=mixed_precision,
                    weight_dtype=dtype,
                    rank=rank,
                    gradient_checkpointing=gradient_checkpointing,
                    warmup=warmup,
                    iters=iters,
                )
            except Exception as e:
                r = dict(
                    method="tscd",
                    model=spec.name,
                    batch=b,
                    resolution=res,
                    error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                )
            rows.append(r)
            print(f"  scaling {spec.name} {res}px batch {b}: {_short(r)}", flush=True)
    return rows


def _short(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"][:120]
    mem = f", peak {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else ""
    return f"{r['samples_per_s']:.3g} samples/s{mem}"


# -- analytic estimates (no GPU needed) ----------------------------------------------------------
def flop_estimates() -> dict:
    """UNet forward FLOPs (torch's FlopCounterMode on the meta device) and LoRA sizes of the real
    configs; the basis of the multi-node plan's estimates."""
    from torch.utils.flop_counter import FlopCounterMode

    from train.config import LoraConfig
    from train.lora import add_lora

    out = {}
    for name in ("sd15", "sdxl"):
        spec = SPECS[name]
        unet = build_unet(spec, device="meta", dtype=torch.bfloat16)
        cond, added = conditioning(spec, 1, "meta", torch.bfloat16)
        x = torch.empty(1, 4, spec.latent, spec.latent, device="meta", dtype=torch.bfloat16)
        with FlopCounterMode(display=False) as fc:
            unet(
                x,
                torch.tensor([999], device="meta"),
                encoder_hidden_states=cond,
                **({"added_cond_kwargs": added} if added else {}),
            )
        params = sum(p.numel() for p in unet.parameters())
        lora = add_lora(unet, 64, None, LoraConfig().target_modules)
        out[name] = {
            "resolution": spec.resolution,
            "unet_params": params,
            "unet_forward_tflop_per_image": fc.get_total_flops() / 1e12,
            "lora_rank64_params": sum(p.numel() for p in lora),
        }
    return out


# Peak dense bf16 tensor throughput (vendor datasheets, no sparsity) and the model FLOP
# utilisation assumed for UNet training steps: assumptions, stated as such in RESULTS.md.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "A100": 312.0}
ASSUMED_MFU = 0.35


def step_flop_multipliers(solver_steps: int = 40, segments=(8, 4, 2, 1)) -> dict:
    """UNet-forward equivalents per sample of one training step (backward of the frozen base =
    one forward, for the input gradients; LoRA weight gradients are negligible; gradient
    checkpointing recomputes one forward). TSCD: student fwd+bwd, teacher cond+uncond in one
    batched pass (2), target only on non-boundary rows (1 - k/N averaged over the stages).
    LCM-LoRA (diffusers example): student fwd+bwd, teacher cond, teacher uncond, target."""
    inner = sum(1 - k / solver_steps for k in segments) / len(segments)
    return {
        "tscd": 2 + 2 + inner,
        "tscd_gc": 3 + 2 + inner,
        "lcm": 5.0,
        "lcm_gc": 6.0,
        # generator pass through the teacher's down+mid blocks with input grads, then the
        # discriminator update on real+fake features: about 2 more forwards of that half UNet
        "adversarial_extra_approx": 2.0,
        "target_inner_fraction": inner,
    }


def estimates() -> dict:
    """FLOP-based throughput and multi-node plan for batch 512: estimates, not measurements."""
    fl = flop_estimates()
    mult = step_flop_multipliers()
    out = {
        "flops": fl,
        "step_flop_multipliers": mult,
        "peak_bf16_tflops": PEAK_BF16_TFLOPS,
        "assumed_mfu": ASSUMED_MFU,
        "models": {},
    }
    for name, f in fl.items():
        F = f["unet_forward_tflop_per_image"]
        m = {}
        for gpu, peak in PEAK_BF16_TFLOPS.items():
            eff = peak * ASSUMED_MFU
            tscd = eff / (mult["tscd_gc"] * F)
            lcm = eff / (mult["lcm_gc"] * F)
            samples_stage = 4000 * 512  # one stage of the presets: 4000 steps at global batch 512
            m[gpu] = {
                "tscd_samples_per_s_per_gpu": tscd,
                "lcm_samples_per_s_per_gpu": lcm,
                "tscd_over_lcm": tscd / lcm,
                "gpu_hours_per_stage_4000x512": samples_stage / tscd / 3600,
                "step_seconds_batch512_on_64_gpus": 512 / (64 * tscd),
            }
        lora_bytes = f["lora_rank64_params"] * 4
        m["lora_allreduce_mb_fp32"] = lora_bytes / 2**20
        m["static_memory_gib_batch1"] = {  # weights + LoRA (fp32 weight, grad, AdamW m/v, EMA)
            "base_weights_bf16": f["unet_params"] * 2 / 2**30,
            "lora_train_state": f["lora_rank64_params"] * 20 / 2**30,
        }
        out["models"][name] = m
    return out


# -- main ---------------------------------------------------------------------------------------
def tables(results: dict) -> str:
    md = [f"Machine: {describe(results['machine'])}\n"]
    if results.get("tiny"):
        md.append(f"**{TINY_NOTE}**\n")
    inf = [r for r in results.get("inference", []) if "seconds_per_image" in r]
    if inf:
        md.append("### Inference (batch 1, cfg 1, eta 0.3, TCD timesteps)\n")
        md.append(
            markdown_table(
                ["model", "steps", "path", "ms/image", "UNet calls", "UNet ms", "overhead ms", "overhead share"],
                [
                    [
                        r["model"],
                        r["steps"],
                        r["path"],
                        1e3 * r["seconds_per_image"],
                        r["unet_calls_per_image"],
                        1e3 * r["unet_seconds_per_image"],
                        1e3 * r["overhead_seconds_per_image"],
                        f"{100 * r['overhead_share']:.2f}%",
                    ]
                    for r in inf
                ],
            )
        )
        sm = [r for r in results["inference"] if "sampler_seconds_per_step" in r]
        md.append("\nSampler math alone (zero-cost model), per step, vs one isolated UNet call:\n\n")
        md.append(sampler_share_table(sm))
    if results.get("compile"):
        md.append("\n### torch.compile\n")
        for c in results["compile"]:
            for k, v in c.items():
                if isinstance(v, dict):
                    md.append(
                        f"- {c['model']} {k}: torch.compile(fullgraph=True): {v['fullgraph_compile']}; "
                        f"dynamo.explain: {v['explain_graph_count']} graph(s), {v['explain_graph_break_count']} "
                        "break(s)"
                        + (f" ({'; '.join(v['explain_break_reasons'])})" if v["explain_break_reasons"] else "")
                        + "\n"
                    )
                elif k not in ("model", "steps", "eta"):
                    md.append(f"- {c['model']} {k}: {v}\n")
    for sec, title in (("training", "Training step (LoRA)"), ("scaling", "Scaling (TSCD step)")):
        rows = results.get(sec, [])
        if rows:
            md.append(f"\n### {title}\n")
            md.append(
                markdown_table(
                    ["model", "method", "batch", "res", "grad ckpt", "samples/s", "s/step", "peak GiB", "note"],
                    [
                        [
                            r["model"],
                            r["method"],
                            r["batch"],
                            r["resolution"],
                            r.get("gradient_checkpointing", "-"),
                            r.get("samples_per_s"),
                            r.get("seconds_per_step"),
                            r.get("peak_memory_gib"),
                            r.get("error", "")[:80],
                        ]
                        for r in rows
                    ],
                )
            )
    if results.get("flops"):
        md.append("\n### Analytic (FlopCounterMode, meta device)\n")
        md.append(
            markdown_table(
                ["model", "res", "UNet params (M)", "TFLOP / forward", "LoRA r64 params (M)"],
                [
                    [
                        k,
                        v["resolution"],
                        v["unet_params"] / 1e6,
                        v["unet_forward_tflop_per_image"],
                        v["lora_rank64_params"] / 1e6,
                    ]
                    for k, v in results["flops"].items()
                ],
            )
        )
    return "".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny UNets, one iteration: checks the code paths")
    ap.add_argument("--sections", default="inference,compile,training,scaling")
    ap.add_argument("--models", default=None, help="comma list (default sd15,sdxl; tiny: sd15-tiny,sdxl-tiny)")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--eta", type=float, default=0.3)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument(
        "--estimate",
        action="store_true",
        help="no timing: FLOP counts (meta device) and the batch-512 plan estimates -> results/estimates.json",
    )
    ap.add_argument("--compile-unet", action="store_true", help="--tiny: also trace the sampler with the tiny UNet")
    ap.add_argument("--out", default=None, help="results JSON path (a .md table is written beside it)")
    args = ap.parse_args(argv)
    if args.estimate:
        est = {
            "machine": machine_info(),
            "note": "analytic estimates (FlopCounterMode on the meta device and assumed MFU), not measurements",
            **estimates(),
        }
        out = Path(args.out) if args.out else RESULTS_DIR / "estimates.json"
        write_json(out, est)
        print(json.dumps(est["models"], indent=2))
        return 0
    sections = set(args.sections.split(","))
    tiny = args.tiny
    if not tiny and not torch.cuda.is_available():
        print("speed_gpu needs a CUDA GPU for real figures; use --tiny for a CPU code-path check", file=sys.stderr)
        return 2
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    mp = "no" if tiny else "bf16"
    models = (args.models or ("sd15-tiny,sdxl-tiny" if tiny else "sd15,sdxl")).split(",")
    steps_list = [int(s) for s in args.steps.split(",")]
    warmup, iters = (0, args.iters or 1) if tiny else (2, args.iters or 10)
    if not tiny:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results: dict = {
        "machine": machine_info(),
        "tiny": tiny,
        "note": TINY_NOTE if tiny else "",
        "argv": sys.argv[1:],
        "inference": [],
        "compile": [],
        "training": [],
        "scaling": [],
    }
    t_all = time.time()
    for name in models:
        spec = SPECS[name]
        res = 64 if tiny else spec.resolution
        if "inference" in sections:
            print(f"inference {name}", flush=True)
            results["inference"] += inference_section(
                spec,
                device=device,
                dtype=dtype,
                resolution=res,
                steps_list=steps_list,
                eta=args.eta,
                warmup=warmup,
                iters=iters,
            )
        if "compile" in sections:
            print(f"compile {name}", flush=True)
            results["compile"].append(
                compile_section(
                    spec,
                    device=device,
                    dtype=dtype,
                    resolution=res,
                    steps=min(4, max(steps_list)),
                    eta=args.eta,
                    full=not tiny or args.compile_unet,
                )
            )
        if "training" in sections:
            print(f"training {name}", flush=True)
            batch = 1 if (tiny or "sdxl" in name) else 4
            results["training"] += training_section(
                spec,
                device=device,
                mixed_precision=mp,
                dtype=dtype,
                batch=batch,
                resolution=res,
                rank=4 if tiny else 64,
                methods=("tscd", "lcm_shared", "lcm_copy", "tscd_adv"),
                gradient_checkpointing=(False, True) if not tiny or "sdxl" in name else (False,),
                warmup=warmup,
                iters=iters if not tiny else 1,
            )
        if "scaling" in sections:
            print(f"scaling {name}", flush=True)
            if tiny:
                batches, resolutions = (1, 2), (32, 64)
            elif "sdxl" in name:
                batches, resolutions = (1, 2, 4), (768, 1024)
            else:
                batches, resolutions = (1, 4, 8, 16), (512, 768)
            results["scaling"] += scaling_section(
                spec,
                device=device,
                mixed_precision=mp,
                dtype=dtype,
                batches=batches,
                resolutions=resolutions,
                rank=4 if tiny else 64,
                gradient_checkpointing="sdxl" in name,
                warmup=warmup,
                iters=1 if tiny else 5,
            )
    if "flops" in sections:
        results["flops"] = flop_estimates()
    results["seconds"] = round(time.time() - t_all, 1)
    out = Path(args.out) if args.out else RESULTS_DIR / ("speed_tiny_cpu.json" if tiny else "speed_gpu.json")
    write_json(out, _finite(results))
    write_text(out.with_suffix(".md"), tables(results))
    print(tables(results))
    print(f"wrote {out} ({results['seconds']} s)")
    return 0


def _finite(obj):
    """JSON without NaN/inf (they become null)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


if __name__ == "__main__":
    sys.exit(main())
