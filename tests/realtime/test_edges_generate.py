"""generate(): bad arguments raise a ValueError naming the argument; a NaN model output is reported,
never served as a black image."""

import pytest
import torch

from hypersd_demo.models import build_generator


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"height": 0}, "height must be a positive multiple"),
        ({"width": 31}, "width must be a positive multiple"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"seed": 1e400}, "seed must be an integer"),
        ({"seed": "7"}, "seed must be an integer"),
        ({"prompt": None}, "prompt must be a string"),
    ],
)
def test_generate_rejects(tiny, kw, needle):
    gen, _ = build_generator(tiny)
    args = dict(prompt="a cat", seed=0, height=32, width=32)
    args.update(kw)
    with pytest.raises(ValueError, match=needle):
        gen.generate(**args)
    assert gen.generate("a cat", seed=0, height=32, width=32).shape == (1, 32, 32, 3)  # still serves


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"eta": 2.0}, "eta must be in"),
        ({"timestep": 1000}, "timestep must be in"),
    ],
)
def test_generator_settings(tiny, kw, needle):
    with pytest.raises(ValueError, match=needle):
        build_generator(tiny, **kw)


def test_nan_output_is_reported(tiny):
    gen, _ = build_generator(tiny)
    with torch.no_grad():
        next(p for p in tiny.unet.parameters() if p.dim() > 1).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        gen.generate("a cat", seed=0, height=32, width=32)
