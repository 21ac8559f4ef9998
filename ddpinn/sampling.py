"""Collocation, constraint and test points, reproducible and independent of the process count.

Defines :class:`SamplingMethod`, :func:`sample_box` (the points of a box, or of a face of
it, that fall in one ownership :class:`~ddpinn.geometry.Block`) and :class:`PointGroup` (one loss
term's points before they are drawn; the workload counts them without drawing). The global point set depends
only on (method, n, seed, epoch, cell grid): grid points are a fixed lattice, ``uniform``
points are drawn per cell of a fixed cell grid from counter-based keys, and Sobol/Halton
points are one global low-discrepancy sequence. A process asks only for its block, so runs
on different process counts see the same points. Used by the trainer's batch building.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ddpinn import rng
from ddpinn.geometry import Block, Box

__all__ = ["SamplingMethod", "PointGroup", "sample_box", "grid_shape", "grid_lines", "uniform_cell_counts"]


class SamplingMethod(StrEnum):
    GRID = "grid"
    UNIFORM = "uniform"
    SOBOL = "sobol"
    HALTON = "halton"


def grid_shape(box: Box, n: int | Sequence[int]) -> tuple[int, ...]:
    """Points per axis: ``n`` as given per axis, or a total spread in proportion to the lengths."""
    if not isinstance(n, int):
        return tuple(int(v) for v in n)
    lengths = box.lengths
    per = (n / np.prod(lengths)) ** (1 / box.dim) * lengths
    return tuple(max(1, int(round(v))) for v in per)


def grid_lines(lo: float, hi: float, n: int) -> np.ndarray:
    """The ``n`` grid coordinates of ``grid`` sampling along one axis of ``[lo, hi]``: [n] float64."""
    return np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])


def uniform_cell_counts(n: int, cells: Sequence[int], key: int) -> np.ndarray:
    """Points per cell of ``uniform`` sampling: [n_cells] int64, cells in C order. Every cell gets
    ⌊n / cells⌋ points and the remainder goes to cells ranked by a counter-based draw (so it is
    spread over the whole box, and the same whichever ranks ask)."""
    n_cells = int(np.prod(cells))
    base, extra = divmod(n, n_cells)
    lucky = np.zeros(n_cells, dtype=bool)
    if extra:
        lucky[np.argsort(rng.uniform(key ^ 0x5EED, np.arange(n_cells), 1)[:, 0], kind="stable")[:extra]] = True
    return base + lucky.astype(np.int64)


@dataclass(frozen=True, eq=False)
class PointGroup:
    """One loss term's training points before they are drawn: ``n`` points of ``method`` in the
    box ``[lo, hi]`` (a face or a point where ``lo[a] == hi[a]``) from the random stream
    ``stream``, or the ``given`` points ([n, dim] float64, a data set's)."""

    name: str
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    method: SamplingMethod
    n: int | Sequence[int]
    stream: str
    given: np.ndarray | None = None

    def sample(self, *, seed: int, epoch: int, cells: Sequence[int], block: Block | None) -> np.ndarray:
        """The points that ``block`` owns (all by default): [n_local, dim] float64."""
        if self.given is not None:
            return self.given if block is None else self.given[block.contains(self.given)]
        return sample_box(
            self.lo, self.hi, self.method, self.n, seed=seed, stream=self.stream, epoch=epoch, cells=cells, block=block
        )


def sample_box(
    lo: Sequence[float],
    hi: Sequence[float],
    method: SamplingMethod,
    n: int | Sequence[int],
    *,
    seed: int,
    stream: str,
    epoch: int = 0,
    cells: Sequence[int] | None = None,
    block: Block | None = None,
) -> np.ndarray:
    """Points of the box ``[lo, hi]`` owned by ``block`` (all by default): float64 [n_local, dim].

    A box with ``lo[a] == hi[a]`` on some axes is a face or point: those coordinates are fixed
    and the method acts on the remaining axes. ``n``: total count, or points per axis for
    ``grid``. ``cells``: the cell grid of ``uniform`` sampling (cells per free axis; default one
    cell), aligned with the ownership blocks. ``stream`` names the point set (``"pde"``,
    ``"constraint/bc"``) so that each gets its own random numbers.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    free = [a for a in range(len(lo)) if hi[a] > lo[a]]
    block = block or Block(tuple(lo), tuple(hi), (True,) * len(lo))
    if not free:
        x = lo[None, :].copy()
        return x[block.contains(x)]
    sub = Box(lo[free], hi[free])
    sub_block = Block(
        tuple(block.lo[a] for a in free), tuple(block.hi[a] for a in free), tuple(block.closed_hi[a] for a in free)
    )
    if method == SamplingMethod.GRID:
        y = _grid(sub, grid_shape(sub, n), sub_block)
    elif method == SamplingMethod.UNIFORM:
        if not isinstance(n, int):
            n = int(np.prod(n))
        cell_shape = tuple(cells[a] for a in free) if cells is not None else (1,) * len(free)
        y = _uniform_cells(sub, n, cell_shape, rng.stream_key(seed, stream, epoch), sub_block)
    elif method in (SamplingMethod.SOBOL, SamplingMethod.HALTON):
        if not isinstance(n, int):
            n = int(np.prod(n))
        y = _low_discrepancy(sub, method, n, rng.stream_key(seed, stream, epoch) % 2**32)
        y = y[sub_block.contains(y)]
    else:
        raise ValueError(f"sampling.method: unknown method {method!r}; choose one of {[m.value for m in SamplingMethod]}")
    x = np.repeat(lo[None, :], y.shape[0], axis=0)
    x[:, free] = y
    return x[block.contains(x)]  # a face's fixed coordinate must lie in the block too


def _grid(box: Box, shape: tuple[int, ...], block: Block) -> np.ndarray:
    axes = []
    for a, n in enumerate(shape):
        line = grid_lines(box.lo[a], box.hi[a], n)
        axes.append(line[block.contains(line, axis=a)])
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=-1)


def _uniform_cells(box: Box, n: int, cells: tuple[int, ...], key: int, block: Block) -> np.ndarray:
    """``n`` uniform points, stratified over the cells (:func:`uniform_cell_counts`); each cell's
    points come from its own key."""
    edges = [np.linspace(box.lo[a], box.hi[a], c + 1) for a, c in enumerate(cells)]
    # A cell belongs to the block that owns its lower corner (blocks are aligned with cells).
    mine = [np.nonzero(block.contains(e[:-1], axis=a))[0] for a, e in enumerate(edges)]
    ids = np.ravel_multi_index(np.meshgrid(*mine, indexing="ij"), cells).reshape(-1)
    counts = uniform_cell_counts(n, cells, key)[ids]
    if counts.sum() == 0:
        return np.zeros((0, len(cells)))
    draws = rng.uniform(key, ids, len(cells) * int(counts.max())).reshape(ids.size, -1, len(cells))
    multi = np.unravel_index(ids, cells)
    lo = np.stack([edges[a][multi[a]] for a in range(len(cells))], axis=-1)
    width = np.stack([edges[a][multi[a] + 1] - edges[a][multi[a]] for a in range(len(cells))], axis=-1)
    points = lo[:, None, :] + draws * width[:, None, :]
    keep = np.arange(points.shape[1])[None, :] < counts[:, None]
    return points[keep]


def _low_discrepancy(box: Box, method: SamplingMethod, n: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    engine = qmc.Sobol(box.dim, scramble=True, seed=seed) if method == SamplingMethod.SOBOL else qmc.Halton(
        box.dim, scramble=True, seed=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sobol prefers powers of two; any n is still valid
        unit = engine.random(n)
    return np.asarray(box.lo) + unit * (np.asarray(box.hi) - np.asarray(box.lo))
