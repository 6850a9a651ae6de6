"""Bad input to the training CLI: each case gets one clear line per problem and exit code 2, before
any model loads; nothing in an existing run folder is lost. (Surfaces: config, output folder,
resume, model files.)"""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from train.cli import main

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_clean(err: str, *needles: str, lines: int | None = None):
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    if lines is not None:
        assert len(err.strip().splitlines()) == lines, err


# -- config: (extra CLI args, file name + text or None, expected words) -----------------------------
CONFIG_CASES = [
    (["--set", "optim.lr=0"], None, ["optim.lr must be > 0"]),
    (["--set", "optim.lr=-0.001"], None, ["optim.lr must be > 0"]),
    (["--set", "optim.lr=.nan"], None, ["optim.lr must be > 0"]),
    (["--set", "stage_all.steps=0"], None, ["steps must be >= 1 (0 steps trains nothing"]),
    (["--set", "lora.rank=0"], None, ["lora.rank must be an integer >= 1"]),
    (["--set", "lora.rank=-4"], None, ["lora.rank"]),
    (["--set", "optim.lr=[1, 2]"], None, ["optim.lr: expected a number"]),
    (["--set", "lora.rank=[8]"], None, ["lora.rank: expected an integer"]),
    (["--set", "data.batch_size=0"], None, ["data.batch_size must be >= 1"]),
    (["--set", "solver_steps=null"], None, ["config.solver_steps: expected an integer, got None"]),
    (["--set", "stage_all.cfg_max=null"], None, ["config.stages[0].cfg_max: expected a number, got None"]),
    (["--set", "sample.steps=[0, 2]"], None, ["sample.steps must be a list of step counts"]),
    (["--set", "export.eta=2"], None, ["export.eta must be in [0, 1]"]),
    (["--set", "stage_all.keep_segments=[3]"], None, ["keep_segments entry 3 must be a segment count dividing"]),
    (["--set", "stage_all.keep_fraction=0.5"], None, ["keep_fraction=0.5 needs keep_segments"]),
    (
        ["--set", "stage_all.keep_fraction=2", "--set", "stage_all.keep_segments=[2]"],
        None,
        ["keep_fraction must be in"],
    ),
    (["--set", "model.kind=sd3"], None, ["model.kind must be one of"]),
    (["--set", "data.kind=parquet-please"], None, ["data.kind must be one of"]),
    (["--set", "model.kind=sd15"], None, ["needs model.path"]),
    (
        ["--set", "model.kind=sdxl", "--set", "model.path=/no/such/model"],
        None,
        ["model.path not found: /no/such/model"],
    ),
    (
        ["--set", "model.kind=embedded", "--set", "model.path=polarty"],
        None,
        ["model.path=polarty: no embedded model there", "python -m train.embedded.make_embedded"],
    ),
    (["--set", "data.kind=folder"], None, ["data.kind=folder needs data.path"]),
    (["--set", "lora.init_from=/no/such.safetensors"], None, ["lora.init_from not found"]),
    (
        [],
        ("stages.yaml", "stages:\n  - {name: tscdd, segments: 2, steps: 3}\n"),
        ["unknown stage 'tscdd'", "known stages"],
    ),
    ([], ("bad.yaml", "optim:\n  lr: [1e-3\n"), ["bad.yaml:", "YAML syntax error"]),
    ([], ("bad.json", '{"optim": {"lr": 1e-3,}}'), ["bad.json:1:", "JSON syntax error"]),
    ([], ("bin.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage"), ["bin.yaml", "not a text file"]),
    ([], ("list.yaml", "- 1\n- 2\n"), ["top level must be a mapping"]),
    ([], ("cfg.txt", "a: 1\n"), ["must be .yaml, .yml or .json"]),
]


@pytest.mark.parametrize("extra, file, needles", CONFIG_CASES, ids=[" ".join(c[0]) or c[1][0] for c in CONFIG_CASES])
def test_config_mistakes_one_line_each(tmp_path, capsys, tokenizer_path, extra, file, needles):
    args = [
        "--preset",
        "tiny-test",
        "--output",
        str(tmp_path / "run"),
        "--set",
        f"model.tokenizer_path={tokenizer_path}",
        *extra,
    ]
    if file:
        p = tmp_path / file[0]
        (p.write_bytes if isinstance(file[1], bytes) else p.write_text)(file[1])
        args += ["--config", str(p)]
    code, _, err = _run(capsys, *args)
    assert code == 2
    _assert_clean(err, *needles)
    assert all(line.startswith("config error: ") for line in err.strip().splitlines())
    assert not (tmp_path / "run").exists()  # nothing written before the config is good


def test_every_problem_listed_at_once(capsys, tmp_path):
    code, _, err = _run(
        capsys,
        "--preset",
        "tiny-test",
        "--output",
        str(tmp_path),
        "--set",
        "optim.lr=0",
        "--set",
        "lora.rank=0",
        "--set",
        "stage_all.steps=0",
    )
    assert code == 2
    # one line per problem: lr, rank, and steps in each of the two stages
    _assert_clean(err, "optim.lr", "lora.rank", "stages[0]", "stages[1]", lines=4)


def test_config_is_checked_fast_and_without_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from train.config import load_config, input_problems; "
        "c = load_config('embedded', overrides=['optim.lr=0.001']); input_problems(c); "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    seconds, torch_loaded = res.stdout.split()
    assert torch_loaded == "False" and float(seconds) < 1.0, res.stdout + res.stderr


def test_cli_unknown_preset_has_no_traceback():
    res = subprocess.run(
        [sys.executable, "-m", "train", "--preset", "no-such-preset"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and "available" in res.stderr


# -- the output folder: a finished run is never replaced silently --------------------------------------
def _finished_run(folder: Path) -> dict:
    folder.mkdir(parents=True)
    files = {
        "hypersd_lora.safetensors": b"lora",
        "summary.json": b"{}",
        "samples.png": b"png",
        "metrics.json": b"{}",
        "config.json": b'{"seed": 0}',
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files}


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("flags", [[], ["--resume"]], ids=["plain", "resume-without-checkpoints"])
def test_finished_run_is_not_overwritten(tmp_path, capsys, tokenizer_path, flags):
    out = tmp_path / "run"
    before = _finished_run(out)
    code, _, err = _run(
        capsys, "--preset", "tiny-test", "--output", str(out), "--set", f"model.tokenizer_path={tokenizer_path}", *flags
    )
    assert code == 2
    _assert_clean(err, "finished run", "--overwrite", lines=1)
    assert _digest(out) == before


def test_overwrite_moves_the_old_run_aside(tmp_path):
    from train.preflight import check_run_folder

    out = tmp_path / "run"
    before = _finished_run(out)
    aside = check_run_folder(out, resume=False, overwrite=True)
    assert aside is not None and aside.name.startswith("run.replaced-") and _digest(aside) == before
    assert not out.exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, _, err = _run(capsys, "--preset", "tiny-test", "--output", str(tmp_path / "mine"), "--overwrite")
    assert code == 2
    _assert_clean(err, "not a training run's folder", lines=1)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = _run(capsys, "--preset", "tiny-test", "--output", str(tmp_path / "f"))
    assert code == 2
    _assert_clean(err, "is a file, not a folder", lines=1)


# -- resume with a changed config ------------------------------------------------------------------
def _started_run(out: Path, cfg: dict) -> None:
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "checkpoints" / "step-2" / "state.json").write_text("{}")
    (out / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=0.5", "optim.lr"),
        ("solver_steps=4", "solver_steps"),
        ("stage_all.noise_perturbation=0.2", "stages.0.noise_perturbation"),
        ("lora.rank=16", "lora.rank"),
    ],
)
def test_resume_refuses_a_changed_config(tmp_path, capsys, tokenizer_path, override, key):
    from train.config import load_config

    out = tmp_path / "run"
    base = ["tiny-test"]
    cfg = load_config(*base, overrides=[f"output={out}", f"model.tokenizer_path={tokenizer_path}"])
    _started_run(out, cfg.to_dict())
    before = _digest(out)
    code, _, err = _run(
        capsys,
        "--preset",
        "tiny-test",
        "--output",
        str(out),
        "--set",
        f"model.tokenizer_path={tokenizer_path}",
        "--set",
        override,
        "--resume",
    )
    assert code == 2
    _assert_clean(err, "changed training config", key, "--allow-config-change", lines=1)
    assert _digest(out) == before  # config.json not rewritten


def test_accepted_config_change_is_recorded(tmp_path):
    from train.preflight import check_resume_config, record_config_change

    from train.config import TrainConfig

    old, new = TrainConfig().to_dict(), TrainConfig().to_dict()
    old.update(threads=1, output="a")
    new.update(threads=2, output="b")
    old["optim"]["lr"], new["optim"]["lr"] = 0.001, 0.0005
    (tmp_path / "config.json").write_text(json.dumps(old))
    changes = check_resume_config(tmp_path, new, allow=True)
    assert changes == {"optim.lr": (0.001, 0.0005)}  # runtime keys (threads, output) don't count
    record_config_change(tmp_path, changes)
    rec = json.loads((tmp_path / "config_changes.jsonl").read_text().splitlines()[-1])
    assert rec["changes"] == {"optim.lr": [0.001, 0.0005]}


def test_keys_added_since_the_run_started_are_no_change(tmp_path):
    """A run recorded before a config key existed resumes: the new key at its default changes nothing."""
    from train.config import TrainConfig
    from train.preflight import check_resume_config

    new = TrainConfig().to_dict()
    old = json.loads(json.dumps(new))
    for stage in old["stages"]:
        del stage["keep_segments"], stage["keep_fraction"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert check_resume_config(tmp_path, new, allow=False) == {}
    new["stages"][0]["keep_fraction"] = 0.5  # a real change still counts
    with pytest.raises(Exception, match="stages.0.keep_fraction"):
        check_resume_config(tmp_path, new, allow=False)


def _edit(**top):
    return lambda cfg: {**cfg, **top}


def _stage_name(name):
    return lambda cfg: {**cfg, "stages": [{**cfg["stages"][0], "name": name}, *cfg["stages"][1:]]}


# (case, the recorded config.json: bytes or an edit of the run's config, the change recorded with
# --allow-config-change, words of the one line)
DAMAGED_RECORD_CASES = [
    ("empty", b"", "config.json", ["is unreadable (JSONDecodeError)", "restore it"]),
    ("truncated", b'{"seed": 0, "optim": {"lr', "config.json", ["is unreadable (JSONDecodeError)"]),
    ("binary", b"\xff\xfe\x00\x01garbage", "config.json", ["is unreadable (UnicodeDecodeError)"]),
    ("array", b"[1, 2]", "config.json", ["not a training config (a JSON array, not an object)"]),
    ("null", b"null", "config.json", ["not a training config (a JSON null, not an object)"]),
    ("string", b'"tiny-test"', "config.json", ["not a training config (a JSON string, not an object)"]),
    (
        "unknown stage",
        _stage_name("renamed"),
        "stages.0.name",
        ["cannot be run by this version", "unknown stage 'renamed'"],
    ),
    ("wrong type", _edit(optim=5), "optim", ["cannot be run by this version", "config.optim: expected a mapping"]),
    ("removed key", _edit(old_key=1), "old_key", ["cannot be run by this version", "unknown key(s) ['old_key']"]),
    ("null value", _edit(solver_steps=None), "solver_steps", ["cannot be run by this version"]),
]


@pytest.mark.parametrize("case, record, key, words", DAMAGED_RECORD_CASES, ids=[c[0] for c in DAMAGED_RECORD_CASES])
def test_resume_with_a_damaged_recorded_config(tmp_path, capsys, tokenizer_path, case, record, key, words):
    """The run's config.json is damaged or from a version that cannot run it: one line naming the file
    and what to do (exit 2); --allow-config-change then resumes with the config given now, recorded."""
    from train.config import load_config
    from train.preflight import check_resume_config, record_config_change

    out = tmp_path / "run"
    args = ["--preset", "tiny-test", "--output", str(out), "--set", f"model.tokenizer_path={tokenizer_path}"]
    cfg = load_config("tiny-test", overrides=[f"output={out}", f"model.tokenizer_path={tokenizer_path}"]).to_dict()
    _started_run(out, cfg)
    path = out / "config.json"
    path.write_bytes(record if isinstance(record, bytes) else json.dumps(record(cfg)).encode())
    before = _digest(out)
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 2
    _assert_clean(err, str(path), "--allow-config-change", *words, lines=1)
    assert _digest(out) == before
    changes = check_resume_config(out, cfg, allow=True)
    assert key in changes, changes
    record_config_change(out, changes)
    assert key in json.loads((out / "config_changes.jsonl").read_text())["changes"]


# -- model files: architecture and integrity, from headers, before loading --------------------------
def _sd_folder(root: Path, arch: str, unet_bytes: bytes | None = None) -> Path:
    (root / "unet").mkdir(parents=True)
    for sub in ("vae", "text_encoder", "tokenizer") + (("text_encoder_2", "tokenizer_2") if arch == "sdxl" else ()):
        (root / sub).mkdir()
    cfg = (
        {"cross_attention_dim": 2048, "addition_embed_type": "text_time"}
        if arch == "sdxl"
        else {"cross_attention_dim": 768}
    )
    (root / "unet" / "config.json").write_text(json.dumps(cfg))
    if unet_bytes is not None:
        (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(unet_bytes)
    return root


def _good_safetensors() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_file({"w": torch.zeros(64, 64)}, f"{d}/x.safetensors")
        return Path(f"{d}/x.safetensors").read_bytes()


MODEL_CASES = [
    ("sd15", "sdxl", None, ["--preset sd15", "holds an SDXL model", "--preset sdxl"]),
    ("sdxl", "sd15", None, ["--preset sdxl", "holds an SD1.5 model", "--preset sd15"]),
    ("sd15", "sd15", "truncated", ["diffusion_pytorch_model.safetensors", "truncated"]),
    ("sd15", "sd15", "garbage", ["diffusion_pytorch_model.safetensors"]),
    ("sd15", "sd15", "pickle", ["not safetensors", "unpickling runs code"]),
    ("sd15", "sd15", "empty", ["too short to be a safetensors file"]),
]


@pytest.mark.parametrize(
    "preset, arch, damage, needles", MODEL_CASES, ids=[f"{c[0]}-on-{c[1]}-{c[2]}" for c in MODEL_CASES]
)
def test_model_folder_mistakes(tmp_path, capsys, preset, arch, damage, needles):
    good = _good_safetensors()
    data = {
        None: None,
        "truncated": good[: len(good) // 2],
        "garbage": b"\x07" * 5000,
        "pickle": b"\x80\x04\x95" + b"x" * 100,
        "empty": b"",
    }[damage]
    folder = _sd_folder(tmp_path / "model", arch, data)
    t0 = time.perf_counter()
    code, _, err = _run(
        capsys,
        "--preset",
        preset,
        "--output",
        str(tmp_path / "run"),
        "--set",
        f"model.path={folder}",
        "--set",
        f"data.path={tmp_path}",
        "--set",
        "data.kind=folder",
    )
    assert code == 2 and time.perf_counter() - t0 < 30  # refused from headers, not after loading a model
    _assert_clean(err, *needles, lines=1)


def test_single_file_checkpoint_architecture(tmp_path, capsys):
    ckpt = tmp_path / "sdxl_base.safetensors"
    save_file(
        {
            "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4),
        },
        str(ckpt),
    )
    code, _, err = _run(
        capsys,
        "--preset",
        "sd15",
        "--output",
        str(tmp_path / "run"),
        "--set",
        f"model.path={ckpt}",
        "--set",
        f"data.path={tmp_path}",
        "--set",
        "data.kind=folder",
    )
    assert code == 2
    _assert_clean(err, "holds an SDXL model", lines=1)
    old = tmp_path / "model.ckpt"
    old.write_bytes(b"PK\x03\x04zip")
    code, _, err = _run(
        capsys,
        "--preset",
        "sd15",
        "--output",
        str(tmp_path / "run"),
        "--set",
        f"model.path={old}",
        "--set",
        f"data.path={tmp_path}",
        "--set",
        "data.kind=folder",
    )
    assert code == 2
    _assert_clean(err, "only .safetensors checkpoints", lines=1)


# -- training that diverges stops with one line and keeps the last good checkpoint ----------------------
def test_non_finite_loss_stops_the_run(tmp_path, capsys, tokenizer_path):
    from train.stages import register_stage
    from train.stages.tscd import TSCDStage

    @register_stage("test-diverge")
    class Diverge(TSCDStage):
        def train_step(self, batch, step):
            logs = super().train_step(batch, step)
            return {**logs, "loss/total": float("nan")} if step >= 2 else logs

    cfg = tmp_path / "diverge.yaml"
    cfg.write_text("stages:\n  - {name: test-diverge, segments: 2, steps: 4, loss: mse}\n")
    out = tmp_path / "run"
    code, _, err = _run(
        capsys,
        "--preset",
        "tiny-test",
        "--config",
        str(cfg),
        "--output",
        str(out),
        "--set",
        f"model.tokenizer_path={tokenizer_path}",
        "--set",
        "checkpoint_every=2",
    )
    assert code == 2
    _assert_clean(err, "stage 1 step 3", "NaN/Inf", "step-2", "optim.lr=", lines=1)
    assert not (out / "hypersd_lora.safetensors").exists()
    assert (out / "checkpoints" / "step-2").is_dir()
