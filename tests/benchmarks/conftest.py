import pytest


@pytest.fixture(autouse=True)
def _two_threads():
    """Benchmarks set their own thread count; restore the caller's afterwards."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def stand_in_evaluator(monkeypatch):
    """Install a stand-in for quality_embedded.Evaluator (a class with a ``calls`` list): the embedded
    probes then run without a model; machine_info is fixed."""
    from benchmarks import quality_embedded

    def install(cls):
        cls.calls = []
        monkeypatch.setattr(quality_embedded, "Evaluator", cls)
        monkeypatch.setattr("benchmarks.machine.machine_info", lambda: {"cpu": "test"})
        return cls

    return install
