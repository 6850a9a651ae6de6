"""memory_sdxl_dmd: the live-tensor tracker counts exact bytes under fake tensors, and the --tiny
run of the real DMD stage gives peaks consistent with what must be alive."""

import gc
import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.memory_sdxl_dmd import NOTE, LiveTensorTracker, main, measure


def test_tracker_counts_exact_bytes_views_and_saved_tensors():
    tracker = LiveTensorTracker()
    with FakeTensorMode(), tracker:
        base = tracker.current
        a = torch.empty(1000, dtype=torch.float32)
        assert tracker.current - base == 4000
        v = a[10:20].view(2, 5)  # a view: same storage, no new bytes
        assert tracker.current - base == 4000
        b = torch.empty(3, 7, dtype=torch.bfloat16)
        assert tracker.current - base == 4000 + 42
        del v, b
        gc.collect()
        assert tracker.current - base == 4000
        w = torch.empty(1000, dtype=torch.float32, requires_grad=True)
        y = (a * w).sum()  # mul saves a and w for backward
        peak = tracker.peak
        del a
        gc.collect()
        assert tracker.current - base >= 8000  # a is still alive inside the autograd graph
        del y
        gc.collect()
        assert tracker.current - base == 4000  # only w remains
        assert tracker.peak == peak


def test_tracker_phase_peaks_and_scalar_reads():
    tracker = LiveTensorTracker(item=1.0)
    with FakeTensorMode(), tracker:
        base = tracker.current
        with tracker.phase("big"):
            t = torch.empty(256, 256)
            del t
            gc.collect()
        with tracker.phase("small"):
            s = torch.empty(16)
            assert float(s.sum()) == 1.0  # a fake tensor has no value: the tracker answers
    assert tracker.peaks["big"] - base == 256 * 256 * 4
    assert tracker.peaks["small"] - base == 16 * 4 + 4  # s and the 0-d sum


def _reset_accelerate():
    """accelerate keeps one state per process: earlier tests may have made one in another precision."""
    from accelerate.state import AcceleratorState

    import benchmarks.train_harness as harness

    AcceleratorState._reset_state(reset_partial_state=True)
    harness._ACCELERATOR = None


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mem") / "m.json"
    _reset_accelerate()
    try:
        assert (
            main(["--tiny", "--stages", "dmd", "--ranks", "4", "--gc", "on", "--fake-updates", "1", "--out", str(out)])
            == 0
        )
        one = json.loads(out.read_text())
        two = measure("sdxl-tiny", stage="dmd", rank=4, gradient_checkpointing=True, batch=2, fake_updates=1)
    finally:
        _reset_accelerate()
    return out, one, two


def test_tiny_run_writes_labelled_results(tiny_runs):
    out, res, _ = tiny_runs
    assert res["note"] == NOTE and res["tiny"]
    assert NOTE in out.with_suffix(".md").read_text()
    (run,) = res["runs"]
    assert len(run["steps"]) == 2
    assert {"fake_score", "bank", "gen_forward", "backward_step"} <= set(run["steps"][1]["phase_peaks"])


def test_tiny_peaks_cover_what_must_be_alive_and_grow_with_batch(tiny_runs):
    _, res, two = tiny_runs
    one = res["runs"][0]
    for r in (one, two):
        s = r["static_bytes"]
        persistent = sum(
            s[k]
            for k in (
                "base_weights",
                "lora_student",
                "lora_fake",
                "adamw_student",
                "adamw_fake",
                "reference_bank",
                "batch",
            )
        )
        assert s["base_weights"] > 0 and s["lora_student"] == s["lora_fake"] > 0
        # AdamW: two fp32 moments per fp32 LoRA parameter (+ 4-byte step counters)
        assert 2 * s["lora_student"] <= s["adamw_student"] <= 2 * s["lora_student"] + 4 * 4096
        last = r["steps"][-1]
        assert last["live_before"] >= persistent
        assert last["peak"] > last["live_before"]
        assert all(v >= s["base_weights"] for v in last["phase_peaks"].values())
    assert two["steps"][-1]["peak"] > one["steps"][-1]["peak"]
    assert two["steps"][-1]["phase_peaks"]["gen_forward"] > one["steps"][-1]["phase_peaks"]["gen_forward"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of the CUDA measurement")
def test_cuda_measurement_imports_and_refuses_without_a_gpu():
    from benchmarks.memory_sdxl_dmd import measure_cuda

    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        measure_cuda("sdxl")
