"""hypersd_core.capture.GuardedCompile on the CPU (aot_eager backend): captures per signature,
re-capture on a weights change, eager past the limit or after a compile failure, same results."""

import logging

import pytest
import torch

from hypersd_core.capture import GuardedCompile, tensor_signature


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, scale=1.0, extra=None):
        return self.conv(x) * scale + (0 if extra is None else extra["bias"])


def test_signature_sees_shapes_dtypes_and_nesting():
    a = tensor_signature(((torch.zeros(1, 4, 8, 8),), {"c": {"bias": torch.zeros(2)}, "s": 1.0}))
    b = tensor_signature(((torch.zeros(2, 4, 8, 8),), {"c": {"bias": torch.zeros(2)}, "s": 2.0}))
    assert a != b and a == tensor_signature(((torch.ones(1, 4, 8, 8),), {"s": 3.0, "c": {"bias": torch.ones(2)}}))


def test_captures_recaptures_and_limit(caplog):
    net = Net()
    g = GuardedCompile(net, "net", mode=None, backend="aot_eager", max_captures=3)
    x8, x16 = torch.randn(1, 4, 8, 8), torch.randn(2, 4, 16, 16)
    for x in (x8, x8, x16):
        assert torch.allclose(g(x), net(x), atol=1e-6)
    assert len(g.captures) == 2 and g.eager_calls == 0
    # a weights change (new LoRA strength) drops the captures; replaced parameters are used
    with torch.no_grad():
        net.conv.weight = torch.nn.Parameter(net.conv.weight * 2)  # as ComfyUI's set_attr_param does
    assert torch.allclose(g(x8, weights_version="lora-0.5"), net(x8), atol=1e-6)
    assert len(g.captures) == 1 and g.recaptures == 1
    with torch.no_grad():
        net.conv.weight.mul_(0.5)  # an in-place update under the same version is seen too
    assert torch.allclose(g(x8, weights_version="lora-0.5"), net(x8), atol=1e-6)
    for size in (16, 24):
        g(torch.randn(1, 4, size, size), weights_version="lora-0.5")
    assert len(g.captures) == 3 and g.eager_calls == 0
    with caplog.at_level(logging.WARNING, logger="hypersd_core.capture"):
        out = g(torch.randn(1, 4, 32, 32), weights_version="lora-0.5")
    assert g.eager_calls == 1 and "limit 3" in caplog.text and out.shape == (1, 4, 32, 32)


@pytest.mark.parametrize("suppressed", [False, True], ids=["default", "suppress_errors"])
def test_compile_failure_runs_eager(caplog, suppressed):
    # k-diffusion sets dynamo's suppress_errors at import; the failure must still be seen.
    import torch._dynamo

    with torch._dynamo.config.patch(suppress_errors=suppressed):
        _check_compile_failure_runs_eager(caplog)


def _check_compile_failure_runs_eager(caplog):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    net = Net()
    g = GuardedCompile(net, "net", mode=None, backend=broken)
    x = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="hypersd_core.capture"):
        out = g(x, extra={"bias": torch.ones(())})
    assert "torch.compile failed" in caplog.text and g.failed
    assert torch.allclose(out, net(x, extra={"bias": torch.ones(())}))
    g(x)
    assert g.eager_calls == 2 and not g.captures
