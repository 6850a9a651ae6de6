"""benchmarks.faults --tiny: SIGKILLs (one inside a checkpoint write) and a full disk during a
checkpoint write; the resumed LoRA equals the uninterrupted one bit for bit, no half-written file
is left, the full disk is one line and exit 2 (where a tmpfs can be mounted)."""

import json
import os

import pytest

from benchmarks import faults


@pytest.mark.slow
def test_faults_tiny(tmp_path, tokenizer_path):
    code = faults.main(
        ["--tiny", "--kills", "2", "--tokenizer", str(tokenizer_path), "--out", str(tmp_path / "faults")]
    )
    res = json.loads((tmp_path / "faults.json").read_text())
    k, d = res["kills"], res["disk_full"]
    assert k["any_kill_inside_checkpoint_write"] and k["lora_bit_identical"] and not k["partial_files_after_resume"]
    if os.geteuid() == 0:
        assert d["run"], d
    if d["run"]:
        assert d["exit_code"] == 2 and d["one_line"] and not d["traceback"] and not d["damaged_committed"]
        assert d["lora_bit_identical"] and not d["partial_files_after_resume"]
    assert code == 0
