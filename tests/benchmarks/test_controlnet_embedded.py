"""controlnet_embedded --quick with the committed embedded ControlNet and a small exported LoRA:
every row is scored, the 1-step row uses the LoRA header's one-step timestep, the JSON and the
table are written, and the ControlNet really steers the teacher (agreement above no control)."""

import json
import math


from benchmarks.controlnet_embedded import main


def test_controlnet_benchmark_quick(tmp_path, random_lora):
    out = tmp_path / "cn.json"
    md = dict(base_model="embedded-digits", steps=[1, 2], onestep_timestep=800, stage="unified")
    lora = str(random_lora(tmp_path / "run", 4, **md) / "hypersd_lora.safetensors")
    args = ["--quick", "--per-digit", "2", "--lora", f"L={lora}", "--lora", f"S@2={lora}", "--out", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    rows = res["rows"]
    want = {
        "teacher DDIM 4 cfg 3",
        "teacher DDIM 4 cfg 3, no ControlNet",
        "teacher DDIM 1 cfg 3",
        "teacher DDIM 1 cfg 1",
        "teacher DDIM 2 cfg 3",
        "teacher DDIM 2 cfg 1",
        "L 1 step t=800",
        "L 2 step",
        "S 2 step",  # @2: at its own step count only
    }
    assert set(rows) == want
    assert res["n_samples"] == 20
    for r in rows.values():
        assert 0.0 <= r["control_iou"] <= 1.0 and 0.0 <= r["adherence"] <= 1.0 and math.isfinite(r["control_kept"])
    assert rows["teacher DDIM 4 cfg 3"]["control_kept"] == 1.0
    for n, r in rows.items():  # the conflict set (scribble of one digit, prompt of another) for every controlled row
        if n.endswith("no ControlNet"):
            assert "conflict_scribble_wins" not in r
        else:
            assert 0 <= r["conflict_scribble_wins"] + r["conflict_prompt_wins"] <= 1
            assert 0 <= r["conflict_control_iou"] <= 1
    assert rows["L 2 step"]["calls"] == 2 and rows["teacher DDIM 2 cfg 3"]["calls"] == 4
    assert set(res["lora_control_kept_2plus_steps"]) == {"L 2 step", "S 2 step"}
    assert set(res["equal_calls"]["L 2 step"]) == {"teacher DDIM 2 cfg 1", "teacher DDIM 1 cfg 3"}
    # the committed ControlNet steers: the outputs follow the scribbles more than without it
    assert rows["teacher DDIM 4 cfg 3"]["control_iou"] > rows["teacher DDIM 4 cfg 3, no ControlNet"]["control_iou"]
    assert "control IoU" in out.with_suffix(".md").read_text()
