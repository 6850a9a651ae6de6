"""Reference results for one txt2img TSCD run, computed outside ComfyUI's sampling machinery.

Run inside a ComfyUI tree (cwd = COMFYUI_PATH) with a JSON job as the only argument:
    {"repo", "checkpoint", "lora", "strength", "prompt", "seed", "steps", "spacing", "eta", "size",
     "unet" (diffusers-layout weights, optional), "out"}
Writes to "out" (safetensors) the final latents, in SaveLatent's units:
- "core":      hypersd_core.sample_tscd driven by a bare denoiser D(x, sigma) = ComfyUI's
               model.apply_model (same weights, LoRA and text conditioning as the server run),
               starting from the seed's noise at unit VP variance, per-step noise from the seed.
- "diffusers": the diffusers UNet with the same weights (LoRA merged with hypersd_core's
               lora_delta) stepped by diffusers' TCDScheduler with the same noise tensors; the
               last step's predicted x0 (ComfyUI's schedule ends at sigma 0, diffusers at t=0).
and prints a JSON line of side measurements (text-encoder agreement).
"""

import gc
import json
import math
import os
import sys


def main(job: dict) -> None:
    sys.path.insert(0, os.getcwd())
    sys.path.append(job["repo"])
    from comfy.cli_args import args

    args.cpu = True
    import torch
    import comfy.model_management
    import comfy.sd
    from safetensors.torch import save_file

    from hypersd_core.lora_formats import load_lora, to_kohya
    from hypersd_core.samplers import get_sigmas_tscd, sample_tscd
    from hypersd_core.schedule import VPSchedule

    torch.set_grad_enabled(False)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(job["checkpoint"], output_vae=False)
    lora = None
    if job.get("lora"):
        lora = to_kohya(*load_lora(job["lora"]))
        model, clip = comfy.sd.load_lora_for_models(model, clip, lora, job["strength"], 1.0)
    cond = clip.encode_from_tokens(clip.tokenize(job["prompt"])).float()
    comfy.model_management.load_models_gpu([model])

    def denoiser(x, sigma, **_):
        return model.model.apply_model(x, sigma, c_crossattn=cond)

    ms = model.model.model_sampling
    schedule = VPSchedule.from_sigmas(ms.sigmas)
    sigmas = get_sigmas_tscd(job["steps"], schedule, spacing=job["spacing"])
    lat = job["size"] // 8
    noise = torch.randn([1, 4, lat, lat], generator=torch.manual_seed(job["seed"]))  # = comfy.sample.prepare_noise
    x = noise * math.sqrt(1.0 + float(sigmas[0]) ** 2)  # unit-variance VP noise at the first timestep
    core = sample_tscd(denoiser, x, sigmas, extra_args={"seed": job["seed"]}, eta=job["eta"], schedule=schedule)
    scale = model.model.latent_format.scale_factor
    results = {"core": core / scale, "sigmas": sigmas}
    info = {"sigmas": [float(s) for s in sigmas]}

    if job.get("unet"):
        del model
        gc.collect()
        comfy.model_management.soft_empty_cache()
        results["diffusers"] = diffusers_tcd(job, noise, cond, lora) / scale
        info["text_encoder_max_abs_diff"] = text_encoder_diff(job, cond, clip)

    save_file({k: v.contiguous() for k, v in results.items()}, job["out"])
    print(json.dumps(info))


def diffusers_tcd(job, noise, cond, lora):
    import torch
    from diffusers import TCDScheduler

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hypersd_core.lora_formats import lora_delta
    from sd15_models import load_unet

    unet = load_unet(job["unet"])
    if lora is not None:
        modules = {name.replace(".", "_"): m for name, m in unet.named_modules()}
        for key in [k for k in lora if k.endswith(".lora_down.weight")]:
            stem = key[: -len(".lora_down.weight")]
            weight = modules[stem[len("lora_unet_") :]].weight
            delta = lora_delta(
                lora[key].float(), lora[f"{stem}.lora_up.weight"].float(), float(lora[f"{stem}.alpha"]), job["strength"]
            )
            weight += delta.reshape(weight.shape)
    sched = TCDScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        original_inference_steps=50,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sched.set_timesteps(job["steps"])
    gen = torch.Generator().manual_seed(job["seed"])
    latents = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = unet(latents, t, encoder_hidden_states=cond).sample
        ab = sched.alphas_cumprod[int(t)]
        x0 = (latents - (1 - ab).sqrt() * eps) / ab.sqrt()
        latents = sched.step(eps, t, latents, eta=job["eta"], generator=gen).prev_sample
    return x0


def text_encoder_diff(job, cond, clip):
    """ComfyUI's CLIP (fp16 on CPU) vs transformers' CLIPTextModel with the same weights and tokens."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd15_models import TEXT_CONFIG

    te = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    # transformers 5 keeps no "text_model." level; older versions do: load whichever fits.
    flat = not any(k.startswith("text_model.") for k in te.state_dict())
    sd = {(k.removeprefix("text_model.") if flat else k): v.float() for k, v in load_file(job["text_encoder"]).items()}
    te.load_state_dict(sd)
    ids = [t[0] for t in clip.tokenize(job["prompt"])["l"][0]]
    out = te(torch.tensor([ids])).last_hidden_state
    return float((out - cond).abs().max())


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        main(json.load(f))
