"""TSCD segment arithmetic: edges, the last segment, boundaries, divisibility errors."""

import pytest
import torch

from hypersd_core.schedule import trailing_timesteps
from hypersd_core.segments import SegmentGrid

CASES = [(n, k) for n in (40, 80) for k in (8, 4, 2, 1)]


def test_k4_on_40_steps_lands_on_the_trailing_steps():
    g = SegmentGrid(40, 4)
    assert g.segment_bounds() == [(999, 749), (749, 499), (499, 249), (249, -1)]
    assert [g.timestep(i) for i in (0, 9, 10, 39)] == [24, 249, 274, 999]
    assert [g.edge_timestep(i) for i in (0, 9, 10, 39)] == [-1, -1, 249, 749]
    assert [g.is_boundary(i) for i in (0, 9, 10, 11, 30)] == [True, False, True, False, True]


@pytest.mark.parametrize("n, k", CASES)
def test_edges(n, k):
    g = SegmentGrid(n, k)
    width = 1000 // k
    lower_edges = {width * j - 1 for j in range(k)}  # -1, 249, 499, 749 for k = 4
    for i in range(n):
        t, te = g.timestep(i), g.edge_timestep(i)
        assert te in lower_edges
        assert te < t <= te + width  # t lies inside its own segment
        assert g.segment_of(i) == (te + 1) // width
        # the teacher's one solver step from t lands on the edge exactly at the boundary index
        assert g.is_boundary(i) == (g.timestep(i - 1) == te)
    assert sum(g.is_boundary(i) for i in range(n)) == k


@pytest.mark.parametrize("n, k", CASES)
def test_last_segment_lands_on_clean_data(n, k):
    g = SegmentGrid(n, k)
    m = n // k
    assert g.timestep(-1) == -1
    assert all(g.edge_index(i) == 0 and g.edge_timestep(i) == -1 for i in range(m))
    assert g.edge_timestep(m) == g.timestep(m - 1) >= 0
    assert g.segment_bounds()[-1][1] == -1


@pytest.mark.parametrize("n, k", CASES)
def test_segment_starts_are_trailing_timesteps(n, k):
    assert SegmentGrid(n, k).segment_starts() == trailing_timesteps(k)


@pytest.mark.parametrize("n, k", CASES)
def test_vectorised_over_tensors(n, k):
    g = SegmentGrid(n, k)
    i = torch.arange(n)
    assert g.edge_timestep(i).tolist() == [g.edge_timestep(j) for j in range(n)]
    assert g.timestep(i).tolist() == [g.timestep(j) for j in range(n)]
    assert g.is_boundary(i).dtype == torch.bool
    assert g.is_boundary(i).tolist() == [g.is_boundary(j) for j in range(n)]


def test_sample_indices():
    g = SegmentGrid(40, 4)
    a = g.sample_indices(256, generator=torch.Generator().manual_seed(0))
    b = g.sample_indices(256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert 0 <= int(a.min()) and int(a.max()) <= 39 and len(set(a.tolist())) > 30


@pytest.mark.parametrize(
    "n, k, match",
    [
        (50, 4, r"4 segments do not divide the 50-step solver grid.*40 or 80"),
        (40, 3, r"3 segments do not divide the 40-step solver grid"),
        (1001, 1, "num_solver_steps must be an integer"),
        (0, 1, "num_solver_steps must be an integer"),
        (40, 0, "num_segments must be a positive integer"),
    ],
)
def test_bad_grids_raise(n, k, match):
    with pytest.raises(ValueError, match=match):
        SegmentGrid(n, k)


@pytest.mark.parametrize("n", [4, 40, 80])
def test_solver_grid_is_ddim_trailing(n):
    g = SegmentGrid(n, 1)
    assert [g.timestep(i) for i in reversed(range(n))] == trailing_timesteps(n)


def test_one_trailing_grid_for_every_n():
    """SegmentGrid's solver grid is schedule.trailing_timestep, the grid trailing_timesteps lists."""
    for n in range(1, 1001):
        assert SegmentGrid(n, 1).timestep(torch.arange(n)).flip(0).tolist() == trailing_timesteps(n), n
