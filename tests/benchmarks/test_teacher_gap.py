"""teacher_gap_embedded: the embedded teacher at few DDIM steps against its own 50-step samples,
per guidance scale (small n here; the committed run uses 1,000 samples)."""

import json

from benchmarks import teacher_gap_embedded as tg


def test_teacher_gap_rows_and_summary(tmp_path, capsys):
    out = tmp_path / "gap.json"
    assert tg.main(["--cfg", "3,5", "--per-digit", "1", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["samples"] == 10 and [c["cfg"] for c in res["cfgs"]] == [3.0, 5.0]
    for c in res["cfgs"]:
        by = {r["steps"]: r for r in c["rows"]}
        assert sorted(by) == sorted(tg.STEPS)
        assert by[25]["trajectory_error"] < by[4]["trajectory_error"] < by[1]["trajectory_error"]  # it converges
        s = c["summary"]
        assert s["traj_ratio_4_vs_25"] == round(by[4]["trajectory_error"] / by[25]["trajectory_error"], 2)
        gap = s["adherence_vs_reference"]["4"]
        assert gap["minus_reference"] == round(by[4]["adherence"] * 10) - round(c["reference"]["adherence"] * 10)
    # the guided references differ: a different cfg ran
    assert res["cfgs"][0]["rows"][0]["trajectory_error"] != res["cfgs"][1]["rows"][0]["trajectory_error"]
    assert "### cfg 5" in out.with_suffix(".md").read_text()


def test_bad_cfg_is_one_line(capsys):
    assert tg.main(["--cfg", "3,x"]) == 2
    assert tg.main(["--cfg", "0.5"]) == 2
    assert tg.main(["--per-digit", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --cfg '3,x': expected guidance scales separated by commas, e.g. 3,5,7",
        "error: --cfg '0.5': each guidance scale must be in (1, 30]",
        "error: --per-digit must be >= 1, got 0",
    ]
