"""train.embedded.make_embedded, the script that made the committed teacher: a few steps write a
complete embedded model folder that the loaders read."""

import json

from hypersd_models.embedded import load_embedded


def test_make_embedded_writes_a_loadable_teacher(tmp_path, capsys):
    from train.embedded.make_embedded import main

    main(["--out", str(tmp_path), "--steps", "2", "--classifier-epochs", "1"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["teacher_steps"] == 2 and meta["resolution"] == 16 and 0 <= meta["teacher_ddim25_cfg3_accuracy"] <= 1
    teacher = load_embedded(tmp_path)
    assert teacher.unet.config.sample_size == 16 and teacher.resolution == 16
    assert (tmp_path / "classifier").is_dir() and (tmp_path / "tokenizer").is_dir()
    assert "teacher DDIM 25 steps cfg 3" in capsys.readouterr().out
