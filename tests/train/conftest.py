import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tokenizer_path):
    """One in-process run of the tiny-test preset (2 stages, 3 steps each), shared by several tests."""
    from train.config import load_config
    from train.trainer import Trainer

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny-test", overrides=[f"output={out}", f"model.tokenizer_path={tokenizer_path}"])
    trainer = Trainer(cfg)
    results = trainer.run()
    return trainer, results, out
