"""python -m train.evaluate --retable RUN_DIR: a committed run's comparisons, verdict and table are
recomputed from its metrics.json alone; a bad folder or file is one line and exit 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from train.evaluate import main

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "train" / "results" / "embedded_default"


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.json", "table.txt"):
        shutil.copy(RUN / name, out / name)
    return out


def test_retable_reproduces_the_committed_verdict_and_table(run, capsys):
    m = json.loads((run / "metrics.json").read_text())
    del m["equal_calls"], m["verdict"]  # as before the comparisons existed
    (run / "metrics.json").write_text(json.dumps(m))
    (run / "table.txt").write_text("stale\n")
    assert main(["--retable", str(run)]) == 0
    want = json.loads((RUN / "metrics.json").read_text())
    assert json.loads((run / "metrics.json").read_text()) == want
    assert (run / "table.txt").read_text() == (RUN / "table.txt").read_text()
    assert capsys.readouterr().out.splitlines()[0] == want["verdict"]
    assert not list(run.glob(".tmp-*"))


def test_retable_as_a_module(run):
    res = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--retable", str(run)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0] == json.loads((RUN / "metrics.json").read_text())["verdict"]
    assert (run / "metrics.json").read_bytes() == (RUN / "metrics.json").read_bytes()  # an unchanged run: same file


def _no_rows(m):
    del m["rows"]
    return m


def _row_without_metric(m):
    del m["rows"]["student 2"]["frechet_teacher"]
    return m


BAD = [
    ("missing folder", None, "is not a folder"),
    ("no metrics.json", b"", "not found"),
    ("truncated", lambda raw: raw[: len(raw) // 2], "not valid JSON"),
    ("binary garbage", lambda raw: b"\xff\xfe\x00garbage", "not valid JSON"),
    ("a list", lambda raw: b"[1, 2]", "not a metrics.json written by train.evaluate"),
    ("no rows", lambda raw: json.dumps(_no_rows(json.loads(raw))).encode(), "not a metrics.json"),
    ("row lacks a metric", lambda raw: json.dumps(_row_without_metric(json.loads(raw))).encode(), "lacks"),
]


@pytest.mark.parametrize("case, edit, says", BAD, ids=[b[0] for b in BAD])
def test_retable_bad_input_is_one_line(run, capsys, case, edit, says):
    target = run / "metrics.json"
    if edit is None:
        shutil.rmtree(run)
    elif edit == b"":
        target.unlink()
    else:
        target.write_bytes(edit(target.read_bytes()))
    before = target.read_bytes() if target.exists() else None
    assert main(["--retable", str(run)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and says in err and "Traceback" not in err
    assert (target.read_bytes() if target.exists() else None) == before  # nothing rewritten
    if run.exists():
        assert (run / "table.txt").read_text() == (RUN / "table.txt").read_text()


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (REPO / "train" / "results").glob("*/metrics.json")))
def test_every_committed_run_retables_to_itself(tmp_path, name, capsys):
    """Each committed run's table.txt and metrics.json are what its rows give."""
    src, out = REPO / "train" / "results" / name, tmp_path / name
    out.mkdir()
    for f in ("metrics.json", "table.txt"):
        shutil.copy(src / f, out / f)
    assert main(["--retable", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((src / "metrics.json").read_text())
    assert (out / "table.txt").read_text() == (src / "table.txt").read_text()
