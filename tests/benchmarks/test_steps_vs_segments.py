"""steps_vs_segments_embedded refuses a folder without a finished run in one line (its measurement
needs a full embedded run; the committed result is results/steps_vs_segments_embedded.json)."""

from benchmarks.steps_vs_segments_embedded import main


def test_missing_run_is_one_clear_line(tmp_path, capsys):
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no finished embedded run" in err
    assert not (tmp_path / "x.json").exists()
