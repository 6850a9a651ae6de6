"""benchmarks.gpu_all --tiny on the CPU: tasks run as separate processes in priority order within the
budget, each result is saved as it completes, missing prerequisites and a spent budget are
recorded, and the doc tables are rewritten between their markers only."""

import json

import pytest

from benchmarks.gpu_all import BEGIN, END, TASKS, main


@pytest.mark.slow
def test_tiny_run_writes_results_and_docs(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# title\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\n")
    out = tmp_path / "res"
    rc = main(
        [
            "--tiny",
            "--only",
            "memory_sdxl_dmd,realtime_comfyui",
            "--budget",
            "1500",
            "--out-dir",
            str(out),
            "--results-md",
            str(doc),
            "--readme",
            str(readme),
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "gpu_all.json").read_text())
    rows = {r["task"]: r for r in manifest["tasks"]}
    assert [r["task"] for r in manifest["tasks"]] == ["memory_sdxl_dmd", "realtime_comfyui"]  # priority order
    assert rows["memory_sdxl_dmd"]["status"] == "ok" and rows["memory_sdxl_dmd"]["seconds"] > 0
    mem = json.loads((out / "memory_sdxl_dmd.json").read_text())
    assert mem["tiny"] and mem["runs"][0]["steps"][-1]["peak"] > 0
    assert rows["realtime_comfyui"]["status"] == "skipped" and "COMFYUI_PATH" in rows["realtime_comfyui"]["detail"]
    text = doc.read_text()
    assert text.startswith("# title\nbefore\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    assert "TINY MODE" in text and "| memory_sdxl_dmd | ok |" in text
    assert "memory_sdxl_dmd finished" in readme.read_text() and "old" not in readme.read_text()


def test_spent_budget_runs_nothing(tmp_path):
    out = tmp_path / "res"
    assert main(["--tiny", "--budget", "5", "--out-dir", str(out)]) == 1
    rows = json.loads((out / "gpu_all.json").read_text())["tasks"]
    assert [r["task"] for r in rows] == [t.name for t in TASKS]
    assert all(r["status"] == "not run" and "budget" in r["detail"] for r in rows)


def test_unknown_task_is_one_clear_line(capsys):
    assert main(["--tiny", "--only", "nope"]) == 2
    assert "unknown task(s) nope" in capsys.readouterr().err


def test_controlnet_entry_tiny(tmp_path):
    """The ms-per-image-with-control entry runs in --tiny mode through gpu_all and records both figures."""
    out = tmp_path / "res"
    assert main(["--tiny", "--only", "controlnet_gpu", "--budget", "600", "--out-dir", str(out)]) == 0
    rows = json.loads((out / "controlnet_gpu.json").read_text())["rows"]
    assert set(rows) == {"eager 1 step", "eager 2 step"}
    for r in rows.values():
        assert "error" not in r, r.get("traceback")
        assert r["no_control"]["ms"] > 0 and r["control"]["ms"] > 0 and r["control_over_plain"] > 0
