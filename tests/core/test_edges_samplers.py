"""Bad arguments to the samplers fail with a ValueError naming the argument, not deep in torch."""

import pytest
import torch

from hypersd_core.samplers import get_sigmas_onestep, get_sigmas_tscd, sample_dmd_onestep, sample_tscd


def model(x, sigma, **kw):
    return x / (1 + sigma[:, None, None, None] ** 2)


SIG = get_sigmas_tscd(4)
X = torch.randn(1, 4, 8, 8)
CASES = [
    ("no batch dim", torch.randn(8), SIG, "x must be a batch of latents"),
    ("empty batch", torch.randn(0, 4, 8, 8), SIG, "x must be a batch of latents"),
    ("empty sigmas", X, torch.tensor([]), "sigmas must be a 1-D schedule of at least 2 values"),
    ("one sigma", X, SIG[:1], "at least 2 values"),
    ("2-D sigmas", X, SIG[None], "1-D schedule"),
    ("list sigmas", X, [14.6, 0.0], "sigmas must be"),
    ("NaN x", torch.full((1, 4, 8, 8), float("nan")), SIG, "x holds NaN or Inf"),
    ("rising sigmas", X, SIG.flip(0), "non-increasing"),
    ("negative sigma", X, torch.tensor([1.0, -0.5]), ">= 0"),
]


@pytest.mark.parametrize("sampler", [sample_tscd, sample_dmd_onestep])
@pytest.mark.parametrize("what, x, sigmas, needle", CASES, ids=[c[0] for c in CASES])
def test_sampler_rejects(sampler, what, x, sigmas, needle):
    with pytest.raises(ValueError, match=needle):
        sampler(model, x, sigmas)


@pytest.mark.parametrize("kw, needle", [({"eta": 1.5}, "eta"), ({"eta": -0.1}, "eta")])
def test_tscd_knobs(kw, needle):
    with pytest.raises(ValueError, match=needle):
        sample_tscd(model, X, SIG, **kw)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: get_sigmas_tscd(4, denoise=0), "denoise must be in"),
        (lambda: get_sigmas_tscd(0), "steps must be an integer in"),
        (lambda: get_sigmas_tscd(2.5), "steps must be an integer in"),
        (lambda: get_sigmas_tscd(4, spacing="karras"), "spacing must be one of"),
        (lambda: get_sigmas_onestep(0), "timestep must be in"),
        (lambda: get_sigmas_onestep(1000), "timestep must be in"),
    ],
)
def test_schedule_arguments(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
