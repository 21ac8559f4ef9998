"""Collocation points (ddpinn.sampling): counts, bounds, reproducibility and coverage of the box."""

from __future__ import annotations

import numpy as np
import pytest

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.geometry import Box
from ddpinn.sampling import SamplingMethod, grid_shape, sample_box

LO, HI = (0.0, -1.0, 0.0), (1.0, 1.0, 5.0)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_grid_is_a_lattice_with_the_box_corners(dim):
    lo, hi = LO[:dim], HI[:dim]
    shape = (5, 4, 3)[:dim]
    x = sample_box(lo, hi, SamplingMethod.GRID, list(shape), seed=0, stream="pde")
    assert x.shape == (int(np.prod(shape)), dim)
    for a in range(dim):
        np.testing.assert_allclose(np.unique(x[:, a]), np.linspace(lo[a], hi[a], shape[a]))
    # a total count is spread in proportion to the axis lengths
    assert grid_shape(Box((0.0, 0.0), (1.0, 4.0)), 400) == (10, 40)
    assert grid_shape(Box((0.0, 0.0, 0.0), (1.0, 1.0, 5.0)), 1000) == (6, 6, 29)  # (1000/5)^(1/3) = 5.85


@pytest.mark.parametrize("method", ["uniform", "sobol", "halton"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_random_points_are_reproducible_per_epoch(method, dim):
    lo, hi = LO[:dim], HI[:dim]
    kw = dict(seed=3, stream="pde", cells=(4,) * dim)
    x0 = sample_box(lo, hi, SamplingMethod(method), 500, epoch=0, **kw)
    assert x0.shape == (500, dim)
    assert (x0 >= np.asarray(lo)).all() and (x0 <= np.asarray(hi)).all()
    np.testing.assert_array_equal(sample_box(lo, hi, SamplingMethod(method), 500, epoch=0, **kw), x0)
    x1 = sample_box(lo, hi, SamplingMethod(method), 500, epoch=1, **kw)
    other_stream = sample_box(lo, hi, SamplingMethod(method), 500, **{**kw, "stream": "constraint/bc"})
    assert not np.allclose(np.sort(x1, 0), np.sort(x0, 0))
    assert not np.allclose(np.sort(other_stream, 0), np.sort(x0, 0))


def test_face_samples_fix_the_face_coordinate():
    x = sample_box((0.0, 2.0, 0.0), (1.0, 2.0, 5.0), SamplingMethod.UNIFORM, 40, seed=0, stream="c", cells=(4, 4, 4))
    assert x.shape == (40, 3) and (x[:, 1] == 2.0).all()
    point = sample_box((0.5,), (0.5,), SamplingMethod.GRID, 10, seed=0, stream="c")
    np.testing.assert_array_equal(point, [[0.5]])


def _orthant_counts(x: np.ndarray, lo, hi) -> np.ndarray:
    mid = (np.asarray(lo) + np.asarray(hi)) / 2
    codes = ((x > mid) * (2 ** np.arange(x.shape[1]))).sum(1)
    return np.bincount(codes, minlength=2 ** x.shape[1])


COVERAGE = [
    pytest.param(2, (4, 4), 1000, id="2d-more-points-than-cells"),
    pytest.param(3, (4, 4, 4), 2000, id="3d-more-points-than-cells"),
    pytest.param(2, (16, 16), 100, id="2d-fewer-points-than-cells"),
    pytest.param(3, (16, 16, 16), 1000, id="3d-fewer-points-than-cells"),
]


@pytest.mark.parametrize("dim, cells, n", COVERAGE)
def test_uniform_points_cover_the_whole_box(dim, cells, n):
    """Each half-box orthant gets at least half its share (binomial std is ~1/3 of the share here)."""
    lo, hi = LO[:dim], HI[:dim]
    x = sample_box(lo, hi, SamplingMethod.UNIFORM, n, seed=0, stream="pde", cells=cells)
    assert x.shape == (n, dim)
    counts = _orthant_counts(x, lo, hi)
    assert (counts >= 0.5 * n / 2**dim).all(), counts.tolist()


def test_run_collocation_points_reach_every_side_of_the_domain(tmp_path):
    """200 uniform points on P4's L=5 decomposition: a correct sampler leaves a 5%-wide strip at a
    side empty with probability 0.95^200 ≈ 4e-5."""
    exp = build_experiment(load_config(data={
        "problem": {"name": "poisson2d"}, "decomposition": {"levels": 5},
        "sampling": {"method": "uniform", "n": 200}, "run": {"output_dir": str(tmp_path)},
    }))
    x = exp.training_points(0)["pde"]
    assert x.shape == (200, 2)
    assert (x.min(0) < 0.05).all() and (x.max(0) > 0.95).all(), (x.min(0), x.max(0))


def test_uniform_cells_get_equal_shares():
    """n = k · cells: every cell gets exactly k points (stratified sampling)."""
    cells = (3, 5)
    x = sample_box((0.0, 0.0), (3.0, 5.0), SamplingMethod.UNIFORM, 4 * 15, seed=1, stream="pde", cells=cells)
    ids = np.floor(x).astype(int)
    per_cell = np.zeros(cells, dtype=int)
    for i, j in ids:
        per_cell[i, j] += 1
    assert (per_cell == 4).all()
    assert np.unique(x, axis=0).shape[0] == 60
