"""Resume after damage: a truncated newest checkpoint is named and the newest intact one is used
(the result equals the undamaged run's), half-written files are removed, and a run with no intact
checkpoint gets one line."""

import shutil

import pytest
import torch

from hypersd_core.lora_formats import load_lora
from train.cli import main


def _main(*argv):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process
    return main(list(argv))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tokenizer_path):
    out = tmp_path_factory.mktemp("edges_resume") / "run"
    args = [
        "--preset",
        "tiny-test",
        "--set",
        f"model.tokenizer_path={tokenizer_path}",
        "--set",
        "keep_checkpoints=3",
        "--set",
        "eval.enabled=false",
        "--set",
        "sample.steps=[1]",
    ]
    assert _main(*args, "--output", str(out)) == 0
    return out, args


def _as_if_killed_before_export(src, dst):
    shutil.copytree(src, dst)
    for name in ("hypersd_lora.safetensors", "summary.json", "samples.png"):
        (dst / name).unlink(missing_ok=True)
    shutil.rmtree(dst / "hypersd_lora_diffusers", ignore_errors=True)
    steps = sorted((dst / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return steps


def test_truncated_newest_checkpoint_falls_back(finished, tmp_path, capsys):
    src, args = finished
    out = tmp_path / "run"
    steps = _as_if_killed_before_export(src, out)
    assert len(steps) == 3
    lora = steps[-1] / "lora.safetensors"
    lora.write_bytes(lora.read_bytes()[:1000])
    (out / "checkpoints" / ".tmp-step-99").mkdir()  # a checkpoint write that was killed
    (out / ".tmp-abc.safetensors").write_bytes(b"half")  # an export that was killed
    assert _main(*args, "--output", str(out), "--resume") == 0
    printed = capsys.readouterr().out
    assert f"checkpoint {steps[-1].name} is damaged" in printed and "lora.safetensors" in printed
    assert f"resuming from {steps[-2].name}" in printed
    assert not list(out.glob(".tmp-*")) and not list((out / "checkpoints").glob(".tmp-*"))
    a, _ = load_lora(src / "hypersd_lora.safetensors")
    b, _ = load_lora(out / "hypersd_lora.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)


def test_no_intact_checkpoint_one_line(finished, tmp_path, capsys):
    src, args = finished
    out = tmp_path / "run"
    for step in _as_if_killed_before_export(src, out):
        (step / "state.json").write_text("{trunc")
    assert _main(*args, "--output", str(out), "--resume") == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "--overwrite" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
