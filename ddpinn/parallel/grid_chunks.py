"""The regular test grid as boxes of grid indices: each rank's part, and that part in chunks.

Defines :class:`RegularGrid` (the test grid's per-axis coordinates), :class:`GridBox` (a box of grid
indices, which is also a hyperslab of the grid-shaped arrays in ``results.h5``) and
:func:`split_box`. A rank's block owns a contiguous range of indices along every axis, so its
part of the grid is one box; cutting that box into boxes of at most ``sampling.test_chunk``
points bounds the memory of an evaluation, and a chunk is written to ``results.h5`` as one
hyperslab. Pure functions of the grid and the blocks (no communication): every rank can count
every other rank's chunks. Used by :mod:`ddpinn.parallel.batching` and :mod:`ddpinn.train.finish`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ddpinn.geometry.decomposition import Block, Box
from ddpinn.sampling import grid_lines

__all__ = ["GridBox", "RegularGrid", "split_box"]


@dataclass(frozen=True)
class GridBox:
    """Grid indices ``start[a] <= i[a] < stop[a]`` on every axis ``a`` (empty if any range is)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))

    @property
    def n_points(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        """The box as an index into a grid-shaped array (a hyperslab of a ``results.h5`` dataset)."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))


@dataclass(frozen=True, eq=False)
class RegularGrid:
    """The regular test grid of ``domain``: ``axes[a]`` holds axis a's coordinates (float64)."""

    axes: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, domain: Box, shape: tuple[int, ...]) -> RegularGrid:
        """The grid of ``shape`` points over ``domain``: the points :func:`ddpinn.sampling.sample_box`
        draws for the ``grid`` method (a one-point axis sits at the centre)."""
        return cls(tuple(grid_lines(lo, hi, n) for lo, hi, n in zip(domain.lo, domain.hi, shape)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    def owned_box(self, block: Block) -> GridBox:
        """The grid indices that ``block`` owns: a contiguous range per axis, since a block is a box."""
        start, stop = [], []
        for a, line in enumerate(self.axes):
            inside = np.flatnonzero(block.contains(line, axis=a))
            start.append(int(inside[0]) if inside.size else 0)
            stop.append(int(inside[-1]) + 1 if inside.size else 0)
        return GridBox(tuple(start), tuple(stop))

    def points(self, box: GridBox) -> np.ndarray:
        """The box's points in C order (last axis fastest), as ``sample_box`` lists them: [n, dim] float64."""
        mesh = np.meshgrid(*(line[s] for line, s in zip(self.axes, box.slices)), indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=-1)


def split_box(box: GridBox, max_points: int) -> list[GridBox]:
    """``box`` cut into boxes of at most ``max_points`` points, in C order, each a hyperslab: the
    first axis k whose trailing axes hold at most ``max_points`` points is cut into runs of
    ``max_points // trailing`` indices, and each axis before k into single indices. An empty box
    gives no boxes."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    shape = box.shape
    if box.n_points == 0:
        return []
    dim = len(shape)
    k = next(a for a in range(dim) if math.prod(shape[a + 1:]) <= max_points)
    run = max_points // math.prod(shape[k + 1:])
    boxes = []
    for lead in np.ndindex(*shape[:k]):
        for offset in range(0, shape[k], run):
            start = [box.start[a] + lead[a] for a in range(k)] + [box.start[k] + offset] + list(box.start[k + 1:])
            stop = [s + 1 for s in start[:k]] + [min(box.start[k] + offset + run, box.stop[k])] + list(box.stop[k + 1:])
            boxes.append(GridBox(tuple(start), tuple(stop)))
    return boxes
