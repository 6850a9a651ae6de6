import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tokenizer_path):
    """One in-process run of the tiny-test preset (2 stages, 3 steps each), shared by several tests."""
    from train.config import load_config
    from train.trainer import Trainer

    out = tmp_path_factory.mktemp("tiny_run")
    # fp32 export: the tests compare the files against the in-memory fp32 adapter to 1e-4
    cfg = load_config(
        "tiny-test", overrides=[f"output={out}", f"model.tokenizer_path={tokenizer_path}", "export.dtype=fp32"]
    )
    trainer = Trainer(cfg)
    results = trainer.run()
    return trainer, results, out
