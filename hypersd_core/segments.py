"""TSCD segment arithmetic on an N-step solver grid: one implementation for training and sampling.

Solver grid tau_i = DDIM's N-step trailing timesteps, low to high (``schedule.trailing_timestep``;
N = 4, T = 1000: 249, 499, 749, 999; N = 80: 11, 24, 36, 49, ...);
tau_{-1} is "time zero" (clean data). k segments of m = N/k grid steps each: grid index i lies
in segment j = i // m, whose lower edge index is e = j*m and edge time tau_{e-1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import SD_TIMESTEPS, trailing_timestep


@dataclass(frozen=True)
class SegmentGrid:
    """N solver steps split into k equal trajectory segments."""

    num_solver_steps: int
    num_segments: int
    num_train_timesteps: int = SD_TIMESTEPS

    def __post_init__(self):
        n, k, T = self.num_solver_steps, self.num_segments, self.num_train_timesteps
        if not isinstance(n, int) or not 1 <= n <= T:
            raise ValueError(f"num_solver_steps must be an integer in [1, {T}], got {n!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"num_segments must be a positive integer, got {k!r}")
        if n % k:
            good = [d for d in range(1, n + 1) if n % d == 0]
            raise ValueError(
                f"{k} segments do not divide the {n}-step solver grid evenly; use num_solver_steps divisible "
                f"by every segment count (e.g. 40 or 80 for 8/4/2/1), or one of {good}"
            )

    @property
    def steps_per_segment(self) -> int:
        return self.num_solver_steps // self.num_segments

    def timestep(self, i):
        """tau_i; i = -1 gives -1 ("time zero"). Works on ints and integer tensors."""
        return trailing_timestep(i, self.num_solver_steps, self.num_train_timesteps)

    def segment_of(self, i):
        """Segment index j of grid index i."""
        return i // self.steps_per_segment

    def edge_index(self, i):
        """Grid index e of the lower edge of i's segment (the student jumps to tau_{e-1})."""
        return self.segment_of(i) * self.steps_per_segment

    def edge_timestep(self, i):
        """Timestep the student's prediction is jumped to: tau_{e-1} (-1 = clean data)."""
        return self.timestep(self.edge_index(i) - 1)

    def is_boundary(self, i):
        """True where i is its segment's lowest grid step: the teacher step lands on the edge."""
        return i == self.edge_index(i)

    def segment_starts(self) -> list[int]:
        """The timesteps that start each segment, high to low (k=4: 999, 749, 499, 249)."""
        m = self.steps_per_segment
        return [self.timestep(j * m + m - 1) for j in reversed(range(self.num_segments))]

    def segment_bounds(self) -> list[tuple[int, int]]:
        """(upper start timestep, lower edge timestep) per segment, high to low."""
        m = self.steps_per_segment
        return [(self.timestep(j * m + m - 1), self.timestep(j * m - 1)) for j in reversed(range(self.num_segments))]

    def sample_indices(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform grid indices i ~ U{0..N-1} for a batch."""
        return torch.randint(0, self.num_solver_steps, (batch,), generator=generator).to(device)
