"""Convert diffusers-layout SD1.5 components into one LDM-keyed checkpoint with ComfyUI's own code.

Run inside a ComfyUI tree (cwd = COMFYUI_PATH):
    python make_checkpoint.py <components_dir> <out.safetensors>
ComfyUI's loaders accept diffusers/transformers keys and convert them; ``save_checkpoint``'s
key mapping then writes the single-file layout ``CheckpointLoaderSimple`` reads. Stored fp16.
"""

import os
import sys


def main(components_dir: str, out_path: str) -> None:
    sys.path.insert(0, os.getcwd())
    from comfy.cli_args import args

    args.cpu = True
    import torch
    import comfy.sd
    import comfy.utils

    def load(name):
        return comfy.utils.load_torch_file(os.path.join(components_dir, name), safe_load=True)

    model = comfy.sd.load_diffusion_model_state_dict(load("unet.safetensors"))
    if model is None:
        raise SystemExit("ComfyUI did not recognise the UNet state dict as a diffusion model")
    clip = comfy.sd.load_text_encoder_state_dicts(
        [load("text_encoder.safetensors")], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION
    )
    vae = comfy.sd.VAE(sd=load("vae.safetensors"))
    sd = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    tmp = out_path + ".tmp"
    comfy.utils.save_torch_file(sd, tmp)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
