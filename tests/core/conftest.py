import pytest
import torch

from .models import CROSS_DIM, tiny_unet


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run many times faster on one thread than on a shared, busy CPU pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def unet():
    return tiny_unet()


@pytest.fixture(scope="session")
def cond():
    return torch.randn(1, 7, CROSS_DIM, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def z():
    """Unit-variance starting noise (diffusers' initial latents)."""
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
