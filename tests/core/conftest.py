import pytest
import torch

from .models import CROSS_DIM, tiny_unet


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
