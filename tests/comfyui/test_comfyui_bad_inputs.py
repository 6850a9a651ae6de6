"""Every bad LoRA file and node parameter a user can have, in a real ComfyUI server: each gives a
node error that names the file (or the parameter) and says what to do, a good LoRA loads right
after each, and the server stays up. Then a soak: 50 prompts through our nodes with resident
memory flat from the 5th to the 50th."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_server import ComfyError
from prompts import IMAGE_SIZE, txt2img
from sd15_models import CHECKPOINT

pytestmark = pytest.mark.comfyui

GOOD = "Hyper-SD15-1step-lora.safetensors"


def _loader_prompt(lora_name: str, model_only: bool = False) -> dict:
    if model_only:
        lora = {
            "class_type": "HyperSDLoraLoaderModelOnly",
            "inputs": {"model": ["ckpt", 0], "lora_name": lora_name, "strength_model": 1.0},
        }
        show = ["lora", 1]
    else:
        lora = {
            "class_type": "HyperSDLoraLoader",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "lora_name": lora_name,
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
        show = ["lora", 2]
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "lora": lora,
        "show": {"class_type": "PreviewAny", "inputs": {"source": show}},
    }


def _good_sd(comfy) -> dict:
    return load_file(str(comfy.dirs["models"] / "loras" / GOOD))


def _first(sd, suffix):
    return next(k for k in sorted(sd) if k.endswith(suffix))


def _variant(name, sd, change):
    sd = {k: v.clone() for k, v in sd.items()}
    change(sd)
    return sd


def _nan(sd):
    sd[_first(sd, "lora_up.weight")][0, 0] = float("nan")


def _inf(sd):
    sd[_first(sd, "lora_down.weight")][0, 0] = float("inf")


def _wrong_shape(sd):
    k = _first(sd, "lora_down.weight")
    sd[k] = torch.zeros(sd[k].shape[0], sd[k].shape[1] + 3, *sd[k].shape[2:])


def _rank_mismatch(sd):
    k = _first(sd, "lora_up.weight")
    sd[k] = torch.zeros(sd[k].shape[0], sd[k].shape[1] + 2, *sd[k].shape[2:])


def _other_base(sd):  # SDXL-width cross-attention key/value projections
    for k in [k for k in sd if ("attn2_to_k" in k or "attn2_to_v" in k) and k.endswith("lora_down.weight")]:
        sd[k] = torch.zeros(sd[k].shape[0], 2048)


def _alpha_zero(sd):
    for k in sd:
        if k.endswith(".alpha"):
            sd[k] = torch.zeros(())


def _unknown_keys(sd):
    sd["lora_unet_down_blocks_9_nope.lora_down.weight"] = torch.zeros(4, 8)
    sd["lora_unet_down_blocks_9_nope.lora_up.weight"] = torch.zeros(8, 4)


def _integer(sd):
    k = _first(sd, "lora_down.weight")
    sd[k] = sd[k].to(torch.int32)


# name -> (how to write it, words the error must contain besides the file name)
def _cases(comfy):
    good = _good_sd(comfy)
    raw = (comfy.dirs["models"] / "loras" / GOOD).resolve().read_bytes()
    header = json.dumps({"__metadata__": {"x": "y" * 10}}).encode()
    te_only = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0),
    }
    return {
        "bad_truncated.safetensors": (lambda p: p.write_bytes(raw[: len(raw) // 2]), ["truncated"]),
        "bad_nan.safetensors": (lambda p: save_file(_variant(p, good, _nan), str(p)), ["NaN or Inf"]),
        "bad_inf.safetensors": (lambda p: save_file(_variant(p, good, _inf), str(p)), ["NaN or Inf"]),
        "bad_shape.safetensors": (lambda p: save_file(_variant(p, good, _wrong_shape), str(p)), ["does not fit"]),
        "bad_rank.safetensors": (
            lambda p: save_file(_variant(p, good, _rank_mismatch), str(p)),
            ["disagree on the rank"],
        ),
        "bad_sdxl_part.safetensors": (lambda p: save_file(_variant(p, good, _other_base), str(p)), ["SDXL"]),
        "bad_unknown_keys.safetensors": (
            lambda p: save_file(_variant(p, good, _unknown_keys), str(p)),
            ["match nothing"],
        ),
        "bad_integer.safetensors": (lambda p: save_file(_variant(p, good, _integer), str(p)), ["not floating point"]),
        "bad_empty.safetensors": (lambda p: save_file({}, str(p)), ["holds no tensors"]),
        "bad_pickle.safetensors": (
            lambda p: p.write_bytes(b"\x80\x04\x95" + b"\x00" * 200),
            ["pickle", "not safetensors"],
        ),
        "bad_zip.safetensors": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 200), ["zip archive"]),
        "bad_huge_header.safetensors": (lambda p: p.write_bytes(struct.pack("<Q", 2**40) + header), ["header claims"]),
        "bad_text_encoder_only.safetensors": (lambda p: save_file(te_only, str(p)), ["no diffusion-model weights"]),
        "bad_alpha_zero.safetensors": (lambda p: save_file(_variant(p, good, _alpha_zero), str(p)), ["alpha 0"]),
    }


@pytest.fixture(scope="module")
def bad_files(comfy):
    cases = _cases(comfy)
    folder = comfy.dirs["models"] / "loras"
    for name, (write, _) in cases.items():
        write(folder / name)
    yield cases
    for name in cases:
        (folder / name).unlink(missing_ok=True)


def _error(comfy, prompt, first_line: bool = True) -> str:
    """ComfyUI's message: a rejected prompt (validation, HTTP 400) or a failed node (execution)."""
    with pytest.raises(ComfyError) as e:
        comfy.run(prompt)
    return str(e.value).split("\n")[0] if first_line else str(e.value)


@pytest.mark.parametrize("model_only", [False, True], ids=["loader", "model-only"])
def test_every_bad_lora_file_is_a_clear_node_error(comfy, bad_files, model_only):
    for name, (_, words) in bad_files.items():
        if name == "bad_text_encoder_only.safetensors" and not model_only:
            # with CLIP a text-encoder LoRA is legitimate: it patches CLIP, and the log says the model is unchanged
            before = len(comfy.log_text())
            comfy.run(_loader_prompt(name, model_only))
            assert "the diffusion model is unchanged" in comfy.log_text()[before:]
            continue
        msg = _error(comfy, _loader_prompt(name, model_only))
        assert name in msg, (name, msg)
        for w in words:
            assert w in msg, (name, w, msg)
        assert comfy.proc.poll() is None, "ComfyUI died"
        out = comfy.run(_loader_prompt(GOOD, model_only))  # a good LoRA right after
        assert GOOD in " ".join(map(str, out["show"]["text"]))


@pytest.mark.parametrize(
    "node, inputs, words",
    [
        ("HyperSDScheduler", {"steps": 0, "spacing": "trailing", "denoise": 1.0}, ["steps"]),
        ("HyperSDScheduler", {"steps": 4, "spacing": "trailing", "denoise": 0.0}, ["denoise"]),
        ("HyperSDOneStepScheduler", {"timestep": 0}, ["timestep"]),
        ("HyperSDOneStepScheduler", {"timestep": 1000}, ["timestep"]),
        ("HyperSDTSCDSampler", {"eta": 1.5}, ["eta"]),
        ("HyperSDTSCDSampler", {"eta": -0.1}, ["eta"]),
    ],
)
def test_bad_node_parameters(comfy, node, inputs, words):
    prompt = txt2img(
        CHECKPOINT, GOOD, 1.0, steps=1, spacing="tcd", eta=1.0, seed=1, size=IMAGE_SIZE, prefix="bad_param"
    )
    target = "sampler" if node == "HyperSDTSCDSampler" else "sigmas"
    if node == "HyperSDOneStepScheduler":
        prompt["sigmas"] = {"class_type": node, "inputs": {"model": ["lora", 0], **inputs}}
    else:
        prompt[target]["inputs"].update(inputs)
    msg = _error(comfy, prompt, first_line=False)  # ComfyUI's validation names the input and its range
    assert node in msg and all(w in msg for w in words), msg
    assert comfy.proc.poll() is None


@pytest.mark.slow
def test_soak_50_prompts_memory_flat(comfy):
    """50 prompts through our loader, scheduler and sampler (64 px, 1-4 steps): all succeed and the
    server's resident memory after the 50th is within 5 % of what it was after the 5th."""
    import psutil

    proc = psutil.Process(comfy.proc.pid)
    rss = {}
    for i in range(50):
        steps = (1, 2, 4)[i % 3]
        comfy.run(
            txt2img(
                CHECKPOINT,
                GOOD,
                1.0,
                steps=steps,
                spacing="tcd",
                eta=0.5,
                seed=100 + i,
                size=IMAGE_SIZE,
                prefix=f"soak/{i}",
            )
        )
        if i + 1 in (5, 50):
            rss[i + 1] = proc.memory_info().rss
    growth = rss[50] / rss[5] - 1
    print(f"soak: RSS after 5 prompts {rss[5] / 2**20:.0f} MiB, after 50 {rss[50] / 2**20:.0f} MiB ({growth:+.1%})")
    assert abs(growth) < 0.05, rss
