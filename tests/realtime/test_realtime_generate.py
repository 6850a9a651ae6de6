"""hypersd_core.generate: images, the prompt cache, graph safety, compile fallback, LoRA strength."""

import logging

import pytest
import torch

from hypersd_core.generate import Generator
from hypersd_demo.models import build_generator


def test_one_and_few_step_images(tiny):
    for steps in (1, 2):
        gen, _ = build_generator(tiny, steps=steps, eta=0.5)
        a = gen.generate("a red cube", seed=7, height=32, width=32)
        b = gen.generate("a red cube", seed=7, height=32, width=32)
        c = gen.generate("a red cube", seed=8, height=32, width=32)
        d = gen.generate("a blue ball", seed=7, height=32, width=32)
        assert a.shape == (1, 32, 32, 3) and a.dtype == torch.uint8
        assert torch.equal(a, b), "same prompt and seed must give the same image"
        assert not torch.equal(a, c) and not torch.equal(a, d)
        assert 10 < a.float().std() and a.min() < a.max()
        batch = gen.generate("a red cube", seed=7, height=32, width=48, batch_size=2)
        assert batch.shape == (2, 32, 48, 3)


def test_prompt_cache_counts_text_encoder_calls(tiny, count_calls):
    counter = count_calls(tiny.prompt_encoder.text_encoders[0])
    gen, _ = build_generator(tiny)
    gen.generate("a cat", height=32, width=32)
    assert counter.calls == 1 and gen.stats.text_encoder_calls == 1
    for seed in range(3):
        gen.generate("a cat", seed=seed, height=32, width=32)
    assert counter.calls == 1, "an unchanged prompt must not call the text encoder"
    gen.generate("a dog", height=32, width=32)
    assert counter.calls == 2
    gen.generate("a cat", height=32, width=32)
    assert counter.calls == 2 and gen.stats.prompt_cache_hits == 4


def test_prompt_cache_evicts_oldest(tiny, count_calls):
    counter = count_calls(tiny.prompt_encoder.text_encoders[0])
    gen, _ = build_generator(tiny, cache_size=2)
    for p in ("a", "b", "c", "a"):
        gen.prompt_embeddings(p)
    assert counter.calls == 4  # "a" was evicted by "c"


@pytest.mark.parametrize("steps", [1, 2])
def test_sampling_core_compiles_as_one_graph(tiny, steps):
    """fullgraph=True fails on any graph break: no .item(), no branching on tensor values."""
    gen, _ = build_generator(tiny, steps=steps, eta=0.5)
    ref = gen.generate("a cat", seed=3, height=32, width=32)
    buf = gen._buffers[(1, 32, 32)]
    core = torch.compile(gen.render_core, fullgraph=True, backend="eager", dynamic=False)
    img, finite = core(buf.noise, buf.step_noise, buf.cond)
    assert torch.equal(img, ref) and bool(finite)


def test_cuda_graph_request_on_cpu_runs_eager_with_message(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="hypersd_core.generate"):
        gen, _ = build_generator(tiny, compile="reduce-overhead")
    assert "need a CUDA GPU" in caplog.text and gen.stats.compile_status.startswith("eager")
    assert gen.generate("x", height=32, width=32).shape == (1, 32, 32, 3)


def test_compile_failure_falls_back_to_eager(tiny, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("backend exploded")

    ref = build_generator(tiny)[0].generate("a cat", seed=1, height=32, width=32)
    gen, _ = build_generator(tiny, backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="hypersd_core.capture"):
        out = gen.generate("a cat", seed=1, height=32, width=32)
    assert "torch.compile failed" in caplog.text and "running eager" in caplog.text
    assert "compile failed" in gen.stats.compile_status
    assert torch.equal(out, ref)


def _merged_reference(tiny, lora_sd, strength):
    """Images from a fresh copy of the weights with W + strength*delta added by hand."""
    from hypersd_core.lora_formats import lora_delta

    state = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    for name, mod in tiny.unet.named_modules():
        key = "lora_unet_" + name.replace(".", "_")
        if f"{key}.lora_down.weight" in lora_sd:
            d = lora_delta(
                lora_sd[f"{key}.lora_down.weight"],
                lora_sd[f"{key}.lora_up.weight"],
                float(lora_sd[f"{key}.alpha"]),
                strength,
            )
            state[f"{name}.weight"] = state[f"{name}.weight"] + d.reshape(mod.weight.shape)
    return state


def _tiny_lora(unet, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_q")):
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, mod.in_features, generator=g) * 0.5
            sd[f"{key}.lora_up.weight"] = torch.randn(mod.out_features, rank, generator=g) * 0.5
            sd[f"{key}.alpha"] = torch.tensor(float(rank))
    assert sd
    return sd


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_lora_strength_change_is_seen_without_recapture(tiny, backend):
    """In-place strength changes reach the (compiled) UNet; results match a hand-merged copy."""
    from hypersd_core.lora_merge import LoraMerge

    orig = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    lora = _tiny_lora(tiny.unet)
    kw = {} if backend == "inductor" else {"backend": backend}  # inductor without mode: eager on CPU
    gen, _ = build_generator(tiny, **kw)
    merge = LoraMerge(tiny.unet, lora, strength=0.0)
    base = gen.generate("a cat", seed=2, height=32, width=32)
    outs = {}
    for s in (1.0, 0.5):
        merge.set_strength(s)
        outs[s] = gen.generate("a cat", seed=2, height=32, width=32)
    merge.remove()
    assert torch.equal(gen.generate("a cat", seed=2, height=32, width=32), base)
    assert not torch.equal(outs[1.0], base) and not torch.equal(outs[0.5], outs[1.0])
    for s, out in outs.items():
        tiny.unet.load_state_dict(_merged_reference(tiny, lora, s))
        ref = Generator(tiny.unet, tiny.prompt_encoder, tiny.decoder, vae_scale_factor=2)
        diff = (ref.generate("a cat", seed=2, height=32, width=32).int() - out.int()).abs()
        assert diff.max() <= 1, f"strength {s}: max pixel difference {diff.max()}"
        tiny.unet.load_state_dict(orig)
