"""feedback_dmd_embedded on the embedded teacher with a small exported LoRA: every row is scored,
and a LoRA whose header has a one-step timestep also gets the one-step sampler's row."""

import json
import math


from benchmarks.feedback_dmd_embedded import main, onestep_timestep


def _export(random_lora, tmp_path, name: str, onestep: int | None) -> str:
    """<run>/hypersd_lora_diffusers/ (a folder, as the trainer writes it) of a small non-zero LoRA."""
    md = dict(base_model="embedded-digits", steps=[1, 2], onestep_timestep=onestep, stage="unified")
    return str(random_lora(tmp_path / name, 8, **md) / "hypersd_lora_diffusers")


def test_rows_and_onestep_row_from_the_lora_header(tmp_path, random_lora):
    plain, dmd = _export(random_lora, tmp_path, "plain", None), _export(random_lora, tmp_path, "dmd", 800)
    assert onestep_timestep(plain, None) is None and onestep_timestep(dmd, None) == 800
    assert onestep_timestep(plain, 700) == 700  # the command-line value wins
    out = tmp_path / "fd.json"
    main(
        [
            "--lora",
            f"plain={plain}",
            "--lora",
            f"dmd={dmd}",
            "--steps",
            "1",
            "2",
            "--per-digit",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    want = {
        "teacher DDIM 50 cfg 3",
        "teacher DDIM 25 cfg 3",
        "plain 1 step eta 0",
        "plain 2 step eta 0",
        "dmd 1 step t=800",
        "dmd 1 step eta 0",
        "dmd 2 step eta 0",
    }
    assert set(rows) == want
    for r in rows.values():
        assert all(math.isfinite(r[k]) for k in ("frechet", "adherence", "trajectory_error", "hf_energy"))
    assert rows["teacher DDIM 50 cfg 3"]["trajectory_error"] == 0.0  # the reference itself
    # the one-step sampler at 800 is a different sampler from the TSCD sampler's one step at 999
    assert rows["dmd 1 step t=800"]["trajectory_error"] != rows["dmd 1 step eta 0"]["trajectory_error"]
    assert (tmp_path / "fd_dmd.png").is_file() and (tmp_path / "fd_plain.png").is_file()


def test_onestep_probe_runs_and_records_both_checks(tmp_path, random_lora):
    from benchmarks.onestep_probe_embedded import main as probe

    lora = _export(random_lora, tmp_path, "run", None)
    out = probe(
        [
            "--lora",
            lora,
            "--timesteps",
            "999",
            "800",
            "--per-digit",
            "1",
            "--iters",
            "2",
            "--fake-updates",
            "1",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    assert set(out["teacher_onestep_hf_energy"]) == {
        "t=999 cfg 1",
        "t=800 cfg 1",
        "DDIM 25 cfg 1",
        "t=999 cfg 3",
        "t=800 cfg 3",
        "DDIM 25 cfg 3",
    }
    assert [r["iter"] for r in out["dmd_on_pixels"]] == [0, 2]
    assert out["dmd_on_pixels"][0] != out["dmd_on_pixels"][1]  # the DMD updates moved the pixels
    assert json.loads((tmp_path / "p.json").read_text())["n_images"] == 10
