"""The teacher's trajectory bank (``trajectories: N`` in a tscd stage): rows are a trajectory's
segment start and edge, the bank is the teacher's own guided DDIM run (hypersd_core's sampler from
the same noise), a resumed stage reads it back, and bad settings are one clear line."""

import pytest
import torch

from hypersd_core.segments import SegmentGrid
from train.config import ConfigError, load_config
from train.errors import ResumeError
from train.trajectories import TrajectoryBank, build_bank, record_indices


def test_record_indices_are_the_segment_starts_then_clean():
    assert record_indices(SegmentGrid(8, 4), 4) == [7, 5, 3, 1, -1]
    assert record_indices(SegmentGrid(40, 8), 8) == [39, 34, 29, 24, 19, 14, 9, 4, -1]


def test_draw_pairs_a_segment_start_with_its_edge():
    x = torch.arange(5 * 3, dtype=torch.float32).view(5, 3, 1, 1, 1)  # 4 segments recorded, 3 trajectories
    bank = TrajectoryBank(x, torch.tensor([999, 749, 499, 249, -1]), torch.zeros(3, 2, 4))
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([4, 2, 1] * 40)
    x_t, target, start, edge, traj = bank.draw(len(k), k, g)
    assert torch.equal(edge - start, 4 // k) and bool((start % (4 // k) == 0).all())
    assert torch.equal(x_t, x[start, traj]) and torch.equal(target, x[edge, traj])
    assert set(start[k == 1].tolist()) == {0} and set(start[k == 4].tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="do not divide"):
        bank.draw(2, torch.tensor([3, 3]), g)


@pytest.fixture(scope="module")
def bank_run(tmp_path_factory, tokenizer_path):
    from train.config import load_config
    from train.trainer import Trainer

    out = tmp_path_factory.mktemp("bank_run")
    # stage 2 can train on stage 1's bank (same N and guidance, its edges among stage 1's); stage 3 cannot
    stages = (
        '[{"name": "tscd", "segments": 2, "steps": 2, "loss": "mse", "cfg_min": 2.0, "cfg_max": 2.0, "trajectories": 6, "keep_segments": [4], "keep_fraction": 0.5, "adv_weight": 0.1},'
        ' {"name": "tscd", "segments": 1, "steps": 1, "loss": "mse", "cfg_min": 2.0, "cfg_max": 2.0, "trajectories": 6},'
        ' {"name": "tscd", "segments": 1, "steps": 1, "loss": "mse", "cfg_min": 2.0, "cfg_max": 2.5, "trajectories": 6}]'
    )
    cfg = load_config(
        "tiny-test",
        overrides=[f"output={out}", f"model.tokenizer_path={tokenizer_path}", "eval.enabled=false", f"stages={stages}"],
    )
    from train.data.source import DigitSource

    trainer, fetched, next_batch = Trainer(cfg), [], DigitSource.next_batch
    DigitSource.next_batch = lambda self: fetched.append(1) or next_batch(self)
    try:
        results = trainer.run()
    finally:
        DigitSource.next_batch = next_batch
    trainer.fetched = len(fetched)
    return trainer, results, out


def test_the_bank_is_the_teachers_guided_ddim_run(bank_run):
    from hypersd_core.samplers import sample_tscd
    from hypersd_core.schedule import ve_input_scale
    from train.sampling import guided_denoiser

    trainer, results, out = bank_run
    bank = TrajectoryBank.load(out / "trajectories" / "stage1_rank0.safetensors")
    assert bank.size == 6 and bank.finest == 4 and bank.timesteps.tolist()[-1] == -1
    assert torch.isfinite(bank.x).all() and (out / "hypersd_lora.safetensors").is_file()

    sched = trainer.model.schedule
    grid = SegmentGrid(8, 4)
    sigmas = torch.cat(
        [sched.sigmas_for_timesteps([int(grid.timestep(i)) for i in range(7, -1, -1)])[:-1], torch.zeros(1)]
    )
    unc, _ = trainer.conditioner.uncond(6)
    den = guided_denoiser(trainer.base_unet, bank.cond, unc, 2.0, sched, trainer.model.prediction_type)
    with torch.no_grad(), trainer.teacher(local=True):
        x = bank.x[0] / ve_input_scale(sigmas[0])  # pure noise at the top timestep, VP -> VE
        for p in range(1, 5):
            x = sample_tscd(den, x, sigmas[2 * (p - 1) : 2 * p + 1], eta=0.0, schedule=sched, disable=True)
            want = bank.x[p] * (1 if p == 4 else 1 / ve_input_scale(sigmas[2 * p]))
            assert torch.allclose(x, want, atol=1e-4), p


def test_a_resumed_stage_reads_its_bank_back_and_a_changed_one_is_refused(bank_run):
    from train.stages import get_stage

    trainer, _, out = bank_run
    path = out / "trajectories" / "stage1_rank0.safetensors"
    before = TrajectoryBank.load(path)
    scfg = trainer.cfg.stages[0]
    stage = get_stage("tscd")(trainer.ctx, scfg, 0)
    stage.setup()  # the file exists: read, not rebuilt
    assert torch.equal(stage.bank.x, before.x) and torch.equal(stage.bank.cond, before.cond)
    lines = []
    assert build_bank(stage, 5, 4, report=lines.append).size == 5 and lines == [
        "  4 / 5 trajectories",
        "  5 / 5 trajectories",
    ]
    rows = stage.bank_rows(3)
    assert rows.x_t.shape == rows.target.shape == rows.x0.shape and bool(rows.ts.boundary.all())
    scfg.trajectories = 8
    try:
        with pytest.raises(ResumeError, match="holds 6 trajectories of 4 segments, this stage needs 8 of 4"):
            get_stage("tscd")(trainer.ctx, scfg, 0).setup()
    finally:
        scfg.trajectories = 6


def test_a_later_stage_trains_on_an_earlier_stages_bank_when_it_can(bank_run):
    from train.stages import get_stage
    from train.trajectories import bank_header

    trainer, _, out = bank_run
    folder = out / "trajectories"
    assert sorted(p.name for p in folder.iterdir()) == ["stage1_rank0.safetensors", "stage3_rank0.safetensors"]
    first = TrajectoryBank.load(folder / "stage1_rank0.safetensors")
    assert (
        first.made
        == bank_header(folder / "stage1_rank0.safetensors")[0]
        == {"solver_steps": 8, "cfg_min": 2.0, "cfg_max": 2.0}
    )
    assert TrajectoryBank.load(folder / "stage3_rank0.safetensors").made["cfg_max"] == 2.5
    # prompts for the two banks (6 trajectories, batches of 4), none for the 4 training steps
    assert trainer.fetched == 4
    second = get_stage("tscd")(trainer.ctx, trainer.cfg.stages[1], 1)
    second.setup()  # resumed: still stage 1's bank, 4 segments recorded, drawn as one
    assert not second.wants_data and get_stage("tscd")(trainer.ctx, trainer.cfg.stages[1].__class__(), 0).wants_data
    assert torch.equal(second.bank.x, first.x) and second.bank.finest == 4
    rows = second.bank_rows(3)
    assert bool((rows.ts.t == first.timesteps[0]).all()) and torch.equal(rows.target, rows.x0)
    scfg = trainer.cfg.stages[1]
    scfg.trajectories = 5  # another N: not stage 1's bank, a new one
    try:
        assert get_stage("tscd")(trainer.ctx, scfg, 1)._earlier_bank(5, 1) is None
    finally:
        scfg.trajectories = 6


@pytest.mark.parametrize(
    "stage, message",
    [
        ('{"name": "tscd", "segments": 2, "trajectories": -1}', "trajectories must be an integer >= 0, got -1"),
        ('{"name": "tscd", "segments": 2, "trajectories": 2.5}', "trajectories must be an integer >= 0, got 2.5"),
        ('{"name": "feedback", "segments": 1, "trajectories": 4}', "trajectories is a tscd stage option"),
    ],
)
def test_bad_trajectory_settings_are_one_clear_line(stage, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-test", overrides=[f"stages=[{stage}]"])
