import pytest


@pytest.fixture(autouse=True)
def _two_threads():
    """Benchmarks set their own thread count; restore the caller's afterwards."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
