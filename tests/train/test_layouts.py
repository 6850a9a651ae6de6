"""Digit layouts (train.digits.LAYOUTS): how an embedded model's training data draws the digits,
and the data source, reader and held-out set that follow it."""

import pytest
import torch

from train.digits import apply_layout, layout_held_out, layout_reader_set, load_digit_splits
from train.metrics import digit_reader


class _Conditioner:
    def encode(self, prompts):
        return torch.zeros(len(prompts), 2, 4), None


def test_apply_layout():
    x = torch.rand(400, 1, 4, 4)
    assert torch.equal(apply_layout(x, "digits"), x)
    y = apply_layout(x, "polarity", torch.Generator().manual_seed(0))
    flipped = (y == -x).flatten(1).all(1)
    assert ((y == x).flatten(1).all(1) | flipped).all()  # each image whole, either way
    assert 150 < int(flipped.sum()) < 250
    with pytest.raises(ValueError, match="unknown digit layout 'mirror': one of digits, polarity"):
        apply_layout(x, "mirror")
    with pytest.raises(ValueError, match="unknown digit layout"):
        layout_reader_set(load_digit_splits(8)[0], "mirror")


def test_reader_follows_the_layout():
    """The plain reader cannot read inverted digits; the polarity reader reads both forms."""
    _, test = load_digit_splits(16)
    held = layout_held_out(test, "polarity")
    assert torch.equal(held, layout_held_out(test, "polarity"))  # a fixed draw
    assert digit_reader(16, "polarity").adherence(held, test.labels) > 0.95
    assert digit_reader(16).adherence(-test.images, test.labels) < 0.5
    images, labels = layout_reader_set(test, "polarity")
    assert len(images) == 2 * len(test.labels) and torch.equal(labels[: len(test.labels)], test.labels)


def test_digit_source_draws_the_layout():
    from train.data import DigitSource

    plain = DigitSource(_Conditioner(), 64, 16, "cpu", seed=3)
    pol = DigitSource(_Conditioner(), 64, 16, "cpu", seed=3, layout="polarity")
    a, b = plain.next_batch(), pol.next_batch()
    assert a.prompts == b.prompts  # same draw of digits and captions, only the polarity differs
    same = (a.x0 == b.x0).flatten(1).all(1)
    assert (same | (a.x0 == -b.x0).flatten(1).all(1)).all() and 10 < int((~same).sum()) < 54
    # the background (corner pixel) is -1 for a plain digit, +1 for an inverted one
    assert set(b.x0[:, 0, 0, 0].tolist()) == {-1.0, 1.0} and set(a.x0[:, 0, 0, 0].tolist()) == {-1.0}


def test_embedded_folder_names_a_packaged_model(tmp_path, monkeypatch):
    import hypersd_models.embedded as emb

    (tmp_path / "polarity").mkdir()
    (tmp_path / "polarity" / "meta.json").write_text("{}")
    (tmp_path / "unet").mkdir()  # a part of the default, not a model
    monkeypatch.setattr(emb, "EMBEDDED_DIR", tmp_path)
    assert emb.embedded_folder(None) == tmp_path
    assert emb.embedded_folder("polarity") == tmp_path / "polarity"
    assert emb.embedded_folder("unet") == emb.Path("unet")  # no meta.json: taken as a path
    assert emb.embedded_folder(str(tmp_path / "x")) == tmp_path / "x"
    assert emb.packaged_embedded() == ["polarity"]
    assert emb.classifier_path("polarity") == tmp_path / "polarity" / "classifier"


def test_the_benchmark_evaluator_judges_a_packaged_teacher_by_its_layout():
    """benchmarks' Evaluator on the packaged polarity teacher: its reader and real digits are the
    polarity layout's, as in the trainer's own eval."""
    from benchmarks.quality_embedded import Evaluator
    from train.metrics import layout_judge

    ev = Evaluator("embedded", 1, [0], 2, 3.0, path="polarity")
    reader, held = layout_judge(16, "polarity")
    assert ev.layout == "polarity" and ev.m.base_model == "embedded-digits-polarity"
    assert ev.reader is reader and ev.n_real == len(held)
    assert torch.allclose(ev.real["reader"], reader.features(held))
    default = Evaluator("embedded", 1, [0], 2, 3.0)
    assert default.layout == "digits" and default.reader is layout_judge(16)[0]
