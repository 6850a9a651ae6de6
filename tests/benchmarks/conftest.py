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


@pytest.fixture
def random_lora():
    """``make(run_dir, rank, model_path=None, **metadata)``: a small non-zero LoRA on the embedded teacher
    (``model_path``: another packaged one, e.g. "polarity"), exported as the trainer writes it:
    ``run_dir/hypersd_lora.safetensors`` and ``run_dir/hypersd_lora_diffusers/``; returns ``run_dir``."""

    def make(run_dir, rank: int, model_path: str | None = None, **metadata):
        import torch

        from hypersd_core.lora_formats import HyperSDMetadata
        from hypersd_models.loading import load_model
        from train.config import LoraConfig, ModelConfig
        from train.export import export_lora
        from train.lora import add_lora

        m = load_model(ModelConfig(kind="embedded", path=model_path))
        params = add_lora(m.unet, rank, None, LoraConfig().target_modules)
        with torch.no_grad():  # non-zero, so the student differs from the teacher
            gen = torch.Generator().manual_seed(0)
            for p in params:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        export_lora(m.unet, run_dir, "hypersd_lora", HyperSDMetadata(**metadata))
        return run_dir

    return make
