import pytest
import torch


@pytest.fixture
def tiny(tokenizer_path):
    from hypersd_demo.models import tiny_components

    return tiny_components(tokenizer_path)


class CallCounter:
    """Counts forward calls of a module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


@pytest.fixture
def count_calls():
    return CallCounter
