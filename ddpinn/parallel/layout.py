"""Who owns what: a pure function of the decomposition, the sampling rule and the world size.

Defines :class:`LevelPolicy` and :class:`ParallelLayout`. The domain is cut into a process
grid of blocks aligned with the fixed sampling cell grid (so each rank samples exactly its
block's points, whatever the rank count); a PARTITIONED level gives each subdomain to the rank
whose block holds its centre, a REPLICATED level is held whole by every rank. Every rank
computes the same layout from the same inputs; nothing here communicates.

Used by the batch building (halo points, exchange plans), the model (held subdomains), the
gradient synchronisation and the checkpoints.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ddpinn.geometry import Block, Decomposition

__all__ = ["LevelPolicy", "ParallelLayout", "LayoutError", "process_grid"]


class LayoutError(ValueError):
    """A world size or policy that the decomposition cannot support; the message shows why."""


class LevelPolicy(StrEnum):
    REPLICATED = "replicated"
    PARTITIONED = "partitioned"


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return sorted(out, reverse=True)


def process_grid(world_size: int, cells: Sequence[int], axes: Sequence[int] | None = None) -> tuple[int, ...]:
    """Blocks per axis with product ``world_size``, keeping blocks as cubic (in cells) as possible.

    ``axes``: the axes that may be cut (all by default); the others get one block. A subdomain
    schedule that sweeps along an axis leaves that axis out, so that no rank waits idle for the
    band to reach its blocks (:func:`ddpinn.parallel.policy.partition_axes`)."""
    axes = range(len(cells)) if axes is None else sorted(set(axes))
    grid = [1] * len(cells)
    for p in _prime_factors(world_size):
        # Give the factor to the axis whose blocks are currently longest (in cells) and can still split.
        candidates = [a for a in axes if grid[a] * p <= cells[a]]
        if not candidates:
            raise LayoutError(
                f"world size {world_size} does not fit the cell grid {list(cells)} cut along axes {list(axes)} "
                f"(each rank needs at least one cell per axis of its block); use fewer ranks, more levels or "
                f"more axes to cut"
            )
        a = max(candidates, key=lambda ax: cells[ax] / grid[ax])
        grid[a] *= p
    return tuple(grid)


def _balanced_cuts(weights: np.ndarray, parts: int) -> np.ndarray:
    """Cell indices 0 = k_0 < k_1 < ... < k_parts = n splitting ``weights`` (per cell) evenly."""
    n = weights.size
    if weights.sum() <= 0:
        return np.round(np.linspace(0, n, parts + 1)).astype(np.int64)
    cum = np.concatenate([[0.0], np.cumsum(weights)])
    targets = cum[-1] * np.arange(1, parts) / parts
    cuts = np.searchsorted(cum, targets)
    # The nearer of the two cell boundaries around each target.
    lower = np.clip(cuts - 1, 0, n)
    cuts = np.where(np.abs(cum[lower] - targets) <= np.abs(cum[np.minimum(cuts, n)] - targets), lower, cuts)
    # Keep at least one cell per block.
    cuts = np.clip(cuts, np.arange(1, parts), n - parts + np.arange(1, parts))
    for i in range(1, cuts.size):
        cuts[i] = max(cuts[i], cuts[i - 1] + 1)
    return np.concatenate([[0], cuts, [n]]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class ParallelLayout:
    """The partition of points and subdomains over ``world_size`` ranks.

    ``grid``: blocks per axis; ``cut_cells[a]``: block boundaries along axis a, in cell indices
    (length grid[a] + 1); ``policies[l]``: per level; ``owners[l]``: owner rank of each subdomain of
    a partitioned level (-1 everywhere for a replicated one). Ranks are C-order over ``grid``.
    """

    decomposition: Decomposition
    cells: tuple[int, ...]
    world_size: int
    grid: tuple[int, ...]
    cut_cells: tuple[np.ndarray, ...]
    policies: tuple[LevelPolicy, ...]
    owners: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if int(np.prod(self.grid)) != self.world_size:
            raise LayoutError(f"process grid {self.grid} has {int(np.prod(self.grid))} blocks, not {self.world_size}")
        for l, (policy, level) in enumerate(zip(self.policies, self.decomposition.levels)):
            if policy == LevelPolicy.PARTITIONED and level.n_subdomains < self.world_size:
                raise LayoutError(
                    f"parallel.level_policy[{l}]: level {l + 1} has {level.n_subdomains} subdomains < "
                    f"{self.world_size} ranks; it must be replicated"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        decomposition: Decomposition,
        cells: Sequence[int],
        world_size: int,
        policies: Sequence[LevelPolicy],
        cell_weights: Sequence[np.ndarray] | None = None,
        grid: Sequence[int] | None = None,
    ) -> ParallelLayout:
        """Cut the domain into ``world_size`` blocks and assign subdomains of partitioned levels.

        ``cell_weights[a]``: points per cell slab along axis a (balances the cuts; uniform if None).
        ``grid``: blocks per axis (default :func:`process_grid` over every axis).
        """
        cells = tuple(int(c) for c in cells)
        grid = process_grid(world_size, cells) if grid is None else tuple(int(g) for g in grid)
        cut_cells = tuple(
            _balanced_cuts(np.ones(cells[a]) if cell_weights is None else np.asarray(cell_weights[a], float), grid[a])
            for a in range(len(cells))
        )
        layout = cls(decomposition, cells, world_size, grid, cut_cells, tuple(policies), tuple(
            np.full(level.n_subdomains, -1, dtype=np.int64) for level in decomposition.levels
        ))
        owners = tuple(
            layout._owner_of_centres(level) if policy == LevelPolicy.PARTITIONED else layout.owners[l]
            for l, (policy, level) in enumerate(zip(policies, decomposition.levels))
        )
        return cls(decomposition, cells, world_size, grid, cut_cells, tuple(policies), owners)

    def recut(self, cell_weights: Sequence[np.ndarray]) -> ParallelLayout:
        """The same process grid and level policies, with the cuts placed at equal ``cell_weights``
        (points per cell slab along each axis): rebalancing after the points moved."""
        return ParallelLayout.build(
            self.decomposition, self.cells, self.world_size, self.policies, cell_weights, grid=self.grid
        )

    @classmethod
    def single(cls, decomposition: Decomposition, cells: Sequence[int]) -> ParallelLayout:
        return cls.build(decomposition, cells, 1, [LevelPolicy.REPLICATED] * decomposition.n_levels)

    # ------------------------------------------------------------------ queries
    def cut_coordinates(self, axis: int) -> np.ndarray:
        dom = self.decomposition.domain
        edges = np.linspace(dom.lo[axis], dom.hi[axis], self.cells[axis] + 1)
        return edges[self.cut_cells[axis]]

    def block_index(self, rank: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(rank, self.grid))

    def block(self, rank: int) -> Block:
        """The half-open box of points that ``rank`` owns."""
        idx = self.block_index(rank)
        lo = tuple(float(self.cut_coordinates(a)[i]) for a, i in enumerate(idx))
        hi = tuple(float(self.cut_coordinates(a)[i + 1]) for a, i in enumerate(idx))
        closed = tuple(i == g - 1 for i, g in zip(idx, self.grid))
        return Block(lo, hi, closed)

    def axis_blocks(self, axis: int, coords: np.ndarray) -> np.ndarray:
        """Block index along ``axis`` of each coordinate ([n] -> [n] int64), by the half-open rule
        of :meth:`block`."""
        cuts = self.cut_coordinates(axis)
        return np.clip(np.searchsorted(cuts, coords, side="right") - 1, 0, self.grid[axis] - 1)

    def rank_of_points(self, x: np.ndarray) -> np.ndarray:
        """Owner rank of each point of ``x`` ([n, dim]), by the same half-open rule as :meth:`block`."""
        x = np.asarray(x, dtype=np.float64)
        index = tuple(self.axis_blocks(a, x[:, a]) for a in range(x.shape[1]))
        return np.ravel_multi_index(index, self.grid).astype(np.int64)

    def _owner_of_centres(self, level) -> np.ndarray:
        dom = self.decomposition.domain
        centres = np.clip(level.subdomain_centres(), dom.lo, dom.hi)
        return self.rank_of_points(centres)

    def is_partitioned(self, level: int) -> bool:
        return self.policies[level] == LevelPolicy.PARTITIONED

    @property
    def any_partitioned(self) -> bool:
        return any(p == LevelPolicy.PARTITIONED for p in self.policies)

    def held(self, rank: int) -> list[np.ndarray]:
        """Global ids each level's networks ``rank`` holds: all of a replicated level, owned ones else."""
        return [
            np.nonzero(owner == rank)[0] if self.is_partitioned(l) else np.arange(owner.size)
            for l, owner in enumerate(self.owners)
        ]

    def neighbours(self, rank: int) -> list[int]:
        """Ranks that exchange halo values with ``rank`` (symmetric): q is a neighbour of r when a
        partitioned subdomain owned by one of them reaches into the other's block."""
        return sorted(self._neighbour_sets[rank])

    @functools.cached_property
    def _neighbour_sets(self) -> list[set[int]]:
        # A subdomain owned by block o reaches blocks q_a in [first_a, last_a] along each axis. Owners
        # and reaches are per axis, and a level's subdomains are the full product of its axis
        # indices, so the (owner, reached) block pairs of a level are the product over the axes of
        # the per-axis pairs: a Kronecker product of [grid_a, grid_a] matrices, no loop over subdomains.
        reach = np.zeros((self.world_size, self.world_size), dtype=bool)
        for l, level in enumerate(self.decomposition.levels):
            if not self.is_partitioned(l):
                continue
            dom = self.decomposition.domain
            per_axis = []
            for a in range(level.dim):
                lo, hi = level.axis_bounds(a)
                cuts = self.cut_coordinates(a)
                first = np.clip(np.searchsorted(cuts, lo, side="right") - 1, 0, self.grid[a] - 1)
                last = np.clip(np.searchsorted(cuts, hi, side="left") - 1, 0, self.grid[a] - 1)
                owner = self.axis_blocks(a, np.clip(level.centres[a], dom.lo[a], dom.hi[a]))
                blocks = np.arange(self.grid[a])
                within = (blocks[None, :] >= first[:, None]) & (blocks[None, :] <= last[:, None])  # [shape_a, grid_a]
                pairs = np.zeros((self.grid[a], self.grid[a]), dtype=bool)
                np.logical_or.at(pairs, owner, within)
                per_axis.append(pairs)
            reach |= functools.reduce(np.kron, per_axis).astype(bool)
        linked = reach | reach.T
        np.fill_diagonal(linked, False)
        return [set(np.nonzero(row)[0].tolist()) for row in linked]

    def describe(self) -> str:
        parts = []
        for l, (policy, owner) in enumerate(zip(self.policies, self.owners)):
            if policy == LevelPolicy.PARTITIONED:
                counts = np.bincount(owner, minlength=self.world_size)
                parts.append(f"L{l + 1} partitioned ({counts.min()}-{counts.max()} subdomains/rank)")
            else:
                parts.append(f"L{l + 1} replicated")
        grid = "x".join(map(str, self.grid))
        return f"{self.world_size} rank(s) on a {grid} process grid; " + ", ".join(parts)
