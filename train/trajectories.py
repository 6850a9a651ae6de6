"""The guided teacher's own trajectories as TSCD training inputs (``trajectories: N`` in a tscd stage).

Noised data, TSCD's usual input, is not what a few-step student sees at sampling: it sees pure noise,
then the guided trajectory's own points, whose marginals differ from noised data at cfg > 1. A bank
holds N trajectories of the frozen teacher from pure noise (guided DDIM on the solver grid, w ~
U[cfg_min, cfg_max] per trajectory, the prompts of N training samples), recorded at the segment
edges of the finest segmentation the stage trains. A training row is one segment of one trajectory:
input its start point, target its point at the segment's edge, the teacher's solution itself (no
bootstrapped target and no teacher call per step). The bank is built once when the stage starts and
written to OUTPUT/trajectories/ so that a resumed run reads the same bank back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hypersd_core.segments import SegmentGrid
from hypersd_core.tscd import tscd_timesteps


@dataclass
class TrajectoryBank:
    """``x[p, n]``: trajectory n at record p (p = 0: pure noise at the top segment's start, p = P-1:
    the clean end), in model space; ``timesteps[p]`` its timestep (-1: clean); ``cond``/``added``:
    the conditioning of each trajectory."""

    x: torch.Tensor
    timesteps: torch.Tensor
    cond: torch.Tensor
    added: dict | None = None
    # how it was built (solver_steps, cfg_min, cfg_max), so a later stage can tell whether it may reuse it
    made: dict | None = None

    @property
    def size(self) -> int:
        return self.x.shape[1]

    @property
    def finest(self) -> int:
        """The number of segments recorded (P - 1)."""
        return self.x.shape[0] - 1

    def draw(self, n: int, segments: torch.Tensor, generator: torch.Generator):
        """``n`` rows: a trajectory and, for row b, a segment of the ``segments[b]``-segment split.
        Returns (x_start, x_edge, record index of the start, record index of the edge, trajectory)."""
        k = segments.long()
        if bool((self.finest % k).any()):
            raise ValueError(f"segment counts {sorted(set(k.tolist()))} do not divide the bank's {self.finest}")
        traj = torch.randint(0, self.size, (n,), generator=generator)
        seg = (torch.rand(n, generator=generator, dtype=torch.float64) * k).long()  # 0 = the top segment
        span = self.finest // k
        start, edge = seg * span, (seg + 1) * span
        return self.x[start, traj], self.x[edge, traj], start, edge, traj

    def rows(self, traj: torch.Tensor, device) -> tuple[torch.Tensor, dict | None]:
        cond = self.cond[traj].to(device)
        added = None if self.added is None else {k: v[traj].to(device) for k, v in self.added.items()}
        return cond, added

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from hypersd_core.lora_formats import atomic_write

        t = {"x": self.x.contiguous(), "timesteps": self.timesteps.contiguous(), "cond": self.cond.contiguous()}
        t.update({f"added.{k}": v.contiguous() for k, v in (self.added or {}).items()})
        meta = {k: str(v) for k, v in (self.made or {}).items()}
        atomic_write(str(path), lambda tmp: save_file(t, tmp, metadata=meta))

    @classmethod
    def load(cls, path: Path) -> "TrajectoryBank":
        from safetensors.torch import load_file

        t = load_file(str(path))
        added = {k[6:]: v for k, v in t.items() if k.startswith("added.")} or None
        return cls(t["x"], t["timesteps"], t["cond"], added, bank_header(path)[0])


def made_by(stage) -> dict:
    """What a bank built for ``stage`` depends on besides its count and edges (recorded in its file)."""
    return {"solver_steps": stage.ctx.config.solver_steps, "cfg_min": stage.cfg.cfg_min, "cfg_max": stage.cfg.cfg_max}


def bank_header(path: Path) -> tuple[dict, list[int]]:
    """How the bank at ``path`` was built ({} for a bank written without that record) and the shape of
    its ``x`` ([records, trajectories, ...]), without reading the tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        shape = f.get_slice("x").get_shape()
    made = {}
    for key, kind in (("solver_steps", int), ("cfg_min", float), ("cfg_max", float)):
        if key in meta:
            made[key] = kind(meta[key])
    return made, shape


def record_indices(grid: SegmentGrid, finest: int) -> list[int]:
    """Solver-grid indices of the records, high to low: each segment start of the ``finest``-segment
    split, then -1 (clean)."""
    m = grid.num_solver_steps // finest
    return [j * m + m - 1 for j in reversed(range(finest))] + [-1]


@torch.no_grad()
def build_bank(stage, count: int, finest: int, report=None) -> TrajectoryBank:
    """``count`` guided teacher trajectories from pure noise, drawing prompts from the stage's data
    (``ctx.next_batch``) and noise and guidance from the stage's generator; ``report(line)`` is
    called at each quarter done."""
    ctx = stage.ctx
    grid = SegmentGrid(ctx.config.solver_steps, finest, ctx.config.num_train_timesteps)
    keep = record_indices(grid, finest)
    xs, conds, addeds, have = [], [], [], 0
    while have < count:
        batch = ctx.next_batch()
        n = min(batch.x0.shape[0], count - have)
        cond = batch.cond[:n]
        added = None if batch.added_cond is None else {k: v[:n] for k, v in batch.added_cond.items()}
        x = stage._randn(batch.x0[:n]).float()  # pure noise at t = tau_{N-1}
        w = stage._guidance(n)
        rec = [x.cpu()]
        for i in range(grid.num_solver_steps - 1, -1, -1):
            index = torch.full((n,), i, dtype=torch.long)
            ts = tscd_timesteps(grid, index)
            ts = ts.to(ctx.device)
            x = stage._teacher_step(x.to(ctx.weight_dtype), ts, cond, added, w).float()
            if i - 1 in keep:
                rec.append(x.cpu())
        xs.append(torch.stack(rec))
        conds.append(cond.detach().cpu())
        addeds.append(None if added is None else {k: v.detach().cpu() for k, v in added.items()})
        if report is not None and (4 * have) // count < (4 * (have + n)) // count:
            report(f"  {have + n} / {count} trajectories")
        have += n
    added = None if addeds[0] is None else {k: torch.cat([a[k] for a in addeds]) for k in addeds[0]}
    timesteps = torch.tensor([int(grid.timestep(i)) for i in keep])
    return TrajectoryBank(torch.cat(xs, 1), timesteps, torch.cat(conds), added, made_by(stage))
