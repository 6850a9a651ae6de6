"""teacher_variants_embedded: probe teachers on harder data, few-step DDIM against their own
many-step samples (a few optimizer steps here; the committed run trains each for 2,400)."""

import json

from benchmarks import teacher_variants_embedded as tv


def test_variants_rows_checks_and_gaps(tmp_path):
    out = tmp_path / "tv.json"
    argv = ["--variants", "default,polarity,latent", "--steps", "2", "--ae-steps", "2", "--per-digit", "1"]
    assert tv.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["variants"]) == ["default", "polarity", "latent"] and res["samples"] == 10
    for name, r in res["variants"].items():
        by = {x["steps"]: x for x in r["rows"]}
        assert sorted(by) == list(tv.STEPS)
        assert r["reference"]["trajectory_error"] == 0.0 and r["unguided"]["cfg"] == 1.0
        assert by[25]["trajectory_error"] < by[1]["trajectory_error"], name  # the ladder converges
        for k, g in r["few_step_minus_reference"].items():
            assert g["minus_reference"] == round(by[int(k)]["adherence"] * 10) - round(r["reference"]["adherence"] * 10)
        assert 0.9 < r["checks"]["reader_on_real"] <= 1.0, name  # the reader fits each layout's real images
    assert res["variants"]["default"]["train_seconds"] == 0.0  # the committed teacher, not retrained
    assert "reader_on_reconstructions" in res["variants"]["latent"]["checks"]
    assert "### polarity" in out.with_suffix(".md").read_text()


def test_autoencoder_shapes():
    from train.digits import load_digit_splits

    train, _ = load_digit_splits(16)
    ae = tv.AutoEncoder(train, steps=2, seed=0)
    z = ae.encode(train.images[:3])
    assert z.shape == (3, tv.LATENT[0], tv.LATENT[1], tv.LATENT[1])
    assert ae.decode(z).shape == (3, 1, 16, 16) and ae.decode(z).abs().max() <= 1


def test_bad_arguments_are_one_line(capsys):
    assert tv.main(["--variants", "default,mnist"]) == 2
    assert tv.main(["--steps", "0"]) == 2
    assert tv.main(["--cfg", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --variants 'default,mnist': choose from default, polarity, latent (comma separated)",
        "error: --steps must be >= 1, got 0",
        "error: --cfg must be in (1, 30], got 1",
    ]
