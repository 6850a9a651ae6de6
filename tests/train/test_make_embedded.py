"""train.embedded.make_embedded, the script that made the committed teachers: a few steps write a
complete embedded model folder that the loaders read, with its data layout."""

import json
from types import SimpleNamespace

from hypersd_models.embedded import load_embedded
from hypersd_models.loading import _load_embedded


def test_make_embedded_writes_a_loadable_teacher(tmp_path, capsys):
    from train.embedded.make_embedded import main

    main(["--out", str(tmp_path), "--steps", "2", "--classifier-epochs", "1", "--data", "polarity"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["teacher_steps"] == 2 and meta["resolution"] == 16 and 0 <= meta["teacher_ddim25_cfg3_accuracy"] <= 1
    assert meta["data"] == "polarity" and meta["name"] == "embedded-digits-polarity"
    teacher = load_embedded(tmp_path)
    assert teacher.unet.config.sample_size == 16 and teacher.resolution == 16
    assert (tmp_path / "classifier").is_dir() and (tmp_path / "tokenizer").is_dir()
    assert "teacher DDIM 25 steps cfg 3" in capsys.readouterr().out
    # the trainer's loader passes the layout on (data source, reader) and names the base model
    m = _load_embedded(SimpleNamespace(path=str(tmp_path), tokenizer_path=None))
    assert m.extras["data_layout"] == "polarity" and m.base_model == "embedded-digits-polarity"
    assert "classifier" in m.extras


def test_committed_default_is_the_digits_layout():
    m = _load_embedded(SimpleNamespace(path=None, tokenizer_path=None))
    assert m.extras["data_layout"] == "digits" and m.base_model == "embedded-digits"
