"""The TSCD sampler's step loop is graph-safe: no host syncs (.item(), float(tensor), Python
branches on tensor values) between model calls. torch.compile(fullgraph=True) raises on any
graph break, so compiling the whole sampling loop proves it."""

import pytest
import torch

from hypersd_core.parameterization import DiscreteVPDenoiser
from hypersd_core.samplers import get_sigmas_tscd, sample_dmd_onestep, sample_tscd, tscd_jump_sigmas
from hypersd_core.schedule import VPSchedule

SCHED = VPSchedule.scaled_linear()


class TinyEps(torch.nn.Module):
    """A conv eps-model that uses its (fractional) timestep input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (t / 1000).reshape(-1, 1, 1, 1).to(x.dtype) + 0.5 * x


def test_jump_sigmas_compile_fullgraph():
    sigmas = get_sigmas_tscd(4, SCHED, spacing="tcd")
    fn = torch.compile(lambda s: tscd_jump_sigmas(s, 0.3, SCHED), fullgraph=True, backend="eager")
    assert torch.equal(fn(sigmas), tscd_jump_sigmas(sigmas, 0.3, SCHED))


def test_whole_sampling_loop_compiles_fullgraph():
    model = DiscreteVPDenoiser(TinyEps(), SCHED)
    sigmas = get_sigmas_tscd(4, SCHED, spacing="tcd")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * (1 + sigmas[0] ** 2).sqrt()

    def generate(x, sigmas):
        noise = lambda sigma, sigma_next: torch.ones_like(x) * sigma_next  # deterministic, sigma-dependent
        x = sample_tscd(model, x, sigmas, eta=0.3, noise_sampler=noise, schedule=SCHED)
        return sample_dmd_onestep(model, x, sigmas[-2:], rescale_start=True), x

    eager = generate(x, sigmas)
    compiled = torch.compile(generate, fullgraph=True, backend="eager")(x, sigmas)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (sync-debug mode is CUDA only)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_host_sync_in_the_cuda_step_loop(dtype):
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronising call (.item(),
    blocking copies) while seeded sampling runs on the GPU."""
    from hypersd_core.samplers import seeded_noise_sampler

    model = DiscreteVPDenoiser(TinyEps().cuda().to(dtype), SCHED)
    x = torch.randn(1, 4, 8, 8, device="cuda", dtype=dtype) * 14.6
    sigmas = get_sigmas_tscd(4, SCHED, spacing="tcd").cuda()
    SCHED._tables(x.device)  # the one-time table upload happens before the loop
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sample_tscd(model, x, sigmas, eta=0.3, noise_sampler=seeded_noise_sampler(x, 1), schedule=SCHED)
        out = sample_dmd_onestep(model, out, sigmas[-2:], rescale_start=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.dtype == dtype and torch.isfinite(out).all()
