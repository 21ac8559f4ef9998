"""Per-rank work during one phase of a subdomain schedule, counted per axis from the roles.

Defines :class:`PhaseRankWork`, :class:`PhaseWorkload` (built by :func:`phase_workload`) and
:func:`schedule_work` (the phases ``ddpinn check`` reports: first, busiest, last). A schedule
keeps the training points covered by at least one ACTIVE subdomain; per step a rank evaluates
(kept point, active subdomain) pairs, while its (kept point, fixed subdomain) pairs are
evaluated once per phase.

How it counts without points or pairs: along each axis, the ends of every subdomain interval
(all levels) cut the line into *pieces* (open gaps and the ends themselves); inside a product of
pieces every subdomain either covers all points or none. So the points of each rank in each
piece product (:class:`~ddpinn.parallel.workload.PointCounter`) times the number of active
(fixed) subdomains covering it, a per-axis contraction of the level's role mask, gives the kept
points, pairs per level and halo points. Cost about (rank blocks x pieces) per axis, multiplied
over the axes: fine for check and tests up to a few thousand subdomains per axis-sum; not for L=9.

Exactness as in :mod:`ddpinn.parallel.workload`: exact for grid sampling and given points,
expectations for random points. With ``model.derivatives: fd`` pairs and halo count stencil
points (the point counts times :class:`~ddpinn.parallel.workload.EvaluatedRows`' ``per_point``,
an interior point's stencil, as the plain workload counts them). Used by ``ddpinn check`` and the schedules benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddpinn.build import Experiment
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.workload import (
    EvaluatedRows,
    Intervals,
    PointCounter,
    _owner_columns,
    _pieces,
    _subdomain_intervals,
)
from ddpinn.schedule import Role

__all__ = ["PhaseCounter", "PhaseRankWork", "PhaseWorkload", "phase_workload", "schedule_work"]


@dataclass(frozen=True)
class PhaseRankWork:
    """One rank's work per Adam step of a phase (level keys are 0-based level indices).

    kept_points: own training points covered by an active subdomain (those in the loss).
    active_pairs_by_level: (kept point, active subdomain) pairs it evaluates each step (own
    points on replicated levels; all points of its owned subdomains on partitioned ones).
    fixed_pairs_by_level: the same for fixed subdomains, evaluated once per phase.
    halo_points: other ranks' kept points inside its partitioned subdomains, exchanged every
    step (the fixed subdomains' partial sums travel with the active ones; the exchange plan
    requests the reach of off subdomains too)."""

    rank: int
    kept_points: int
    active_pairs_by_level: dict[int, int]
    fixed_pairs_by_level: dict[int, int]
    halo_points: int

    @property
    def active_pairs(self) -> int:
        return sum(self.active_pairs_by_level.values())


@dataclass(frozen=True)
class PhaseWorkload:
    """Every rank's :class:`PhaseRankWork` in the phase of Adam steps ``[start, end)``;
    ``active`` / ``fixed``: subdomains per level with that role."""

    start: int
    end: int
    ranks: tuple[PhaseRankWork, ...]
    active: tuple[int, ...]
    fixed: tuple[int, ...]
    exact: bool

    def busiest(self) -> PhaseRankWork:
        """The rank with the most active pairs (the one every step of the phase waits for)."""
        return max(self.ranks, key=lambda r: r.active_pairs)

    @property
    def max_active_pairs(self) -> int:
        return self.busiest().active_pairs


def _contract(mask: np.ndarray, per_axis: Sequence[np.ndarray]) -> np.ndarray:
    """``mask`` [n_0, ..., n_{d-1}] contracted with ``per_axis[a]`` [n_a, k_a] along each axis:
    [k_0, ..., k_{d-1}] (how many masked subdomains cover each row combination)."""
    out = mask
    for m in per_axis:  # contract the leading subdomain axis; the row axis goes to the end
        out = np.tensordot(out, m, axes=([0], [0]))
    return out


class PhaseCounter:
    """Counts points per rank in every product of pieces once (the expensive part); then
    :meth:`work` turns each phase's roles into per-rank work by contractions only."""

    def __init__(self, exp: Experiment, layout: ParallelLayout, epoch: int = 0) -> None:
        dec, dim, grid = exp.decomposition, exp.problem.dim, layout.grid
        self.decomposition, self.layout, self.dim = dec, layout, dim
        subs = [[_subdomain_intervals(level, a) for a in range(dim)] for level in dec.levels]
        # Per axis: the pieces between every subdomain end of every level, and which subdomain
        # of each level covers which piece ([n_a, S_a] bool per level).
        pieces, self.covers = [], []
        for a in range(dim):
            regions = [Intervals.open(s[a].lo[i : i + 1], s[a].hi[i : i + 1]) for s in subs for i in range(len(s[a]))]
            cut, inside, _ = _pieces(regions)
            pieces.append(cut)
            rows = np.cumsum([0] + [len(s[a]) for s in subs])
            self.covers.append([inside[rows[l] : rows[l + 1], 0, :] for l in range(dec.n_levels)])
        blocks = [Intervals.blocks(layout, a) for a in range(dim)]
        counter = PointCounter(exp, epoch)
        self.exact = counter.exact
        self.sizes = [len(p) for p in pieces]

        def by_block(atoms, a: int) -> np.ndarray:  # [g_a * S_a, m]: points of block g in piece s
            return (atoms.owned(blocks[a])[:, None, :] * atoms.mass(pieces[a])[None]).reshape(grid[a] * self.sizes[a], -1)

        self.own = counter.count(by_block).reshape([n for a in range(dim) for n in (grid[a], self.sizes[a])])
        """Own points per (block, piece) along each axis: [g_0, S_0, g_1, S_1, ...]."""
        self.every = counter.count(lambda atoms, a: atoms.mass(pieces[a]))
        """Points per piece product, all ranks: [S_0, S_1, ...]."""
        self.piece_axes = tuple(range(1, 2 * dim, 2))
        self.rows_per_point = EvaluatedRows.of(exp).per_point

    def _interleave(self, x: np.ndarray) -> np.ndarray:
        """[S_0, S_1, ...] -> [1, S_0, 1, S_1, ...] (broadcasts against :attr:`own`)."""
        return x.reshape([n for a in range(self.dim) for n in (1, self.sizes[a])])

    def _per_rank(self, x: np.ndarray) -> np.ndarray:
        """Sum over the pieces of [g_0, S_0, ...] -> [world_size] (ranks are C order over the grid)."""
        return x.sum(self.piece_axes).reshape(-1)

    def _covering(self, roles: Sequence[np.ndarray], l: int, role: Role | None, by_owner: bool) -> np.ndarray:
        """Subdomains of level l with ``role`` (None: any) covering each piece product: [S_0, ...],
        or split by owner block [g_0, S_0, g_1, S_1, ...]."""
        level, grid = self.decomposition.levels[l], self.layout.grid
        chosen = np.ones(level.n_subdomains, bool) if role is None else np.asarray(roles[l]) == role
        mask = chosen.reshape(level.shape).astype(np.float64)
        if not by_owner:
            return _contract(mask, [self.covers[a][l].astype(np.float64) for a in range(self.dim)])
        per_axis = []
        for a in range(self.dim):
            owned = np.arange(grid[a])[None, :] == _owner_columns(self.layout, level, a)[:, None]  # [n_a, g_a]
            per_axis.append(
                (owned[:, :, None] & self.covers[a][l][:, None, :]).reshape(level.shape[a], -1).astype(np.float64)
            )
        return _contract(mask, per_axis).reshape(self.own.shape)

    def work(self, roles: Sequence[np.ndarray], start: int = 0, end: int = 0) -> PhaseWorkload:
        """Every rank's work per step under ``roles`` (per level ``[n_subdomains]`` :class:`Role`
        values by global id), the phase ``[start, end)``."""
        n_levels, layout = self.decomposition.n_levels, self.layout
        kept = sum(self._covering(roles, l, Role.ACTIVE, False) for l in range(n_levels)) > 0  # [S_0, ...]
        everywhere = self._interleave(self.every * kept)  # kept points per piece product, all ranks
        active_pairs, fixed_pairs = {}, {}
        halo_region = np.zeros(self.own.shape, dtype=bool)
        for l in range(n_levels):
            if layout.is_partitioned(l):  # the owned subdomains see every rank's points
                active_pairs[l] = self._per_rank(everywhere * self._covering(roles, l, Role.ACTIVE, True))
                fixed_pairs[l] = self._per_rank(everywhere * self._covering(roles, l, Role.FIXED, True))
                # The exchange plan requests the kept points within reach of every owned
                # subdomain, whatever its role (halo_requests does not look at roles).
                halo_region |= self._covering(roles, l, None, True) > 0
            else:  # every subdomain, the own points
                active_pairs[l] = self._per_rank(self.own * self._interleave(self._covering(roles, l, Role.ACTIVE, False)))
                fixed = self._covering(roles, l, Role.FIXED, False) * kept
                fixed_pairs[l] = self._per_rank(self.own * self._interleave(fixed))
        own_kept = self.own * self._interleave(kept)
        kept_points = self._per_rank(own_kept)
        halo = self._per_rank((everywhere - own_kept) * halo_region) * self.rows_per_point
        for pairs in (active_pairs, fixed_pairs):
            pairs.update({l: p * self.rows_per_point for l, p in pairs.items()})
        ranks = tuple(
            PhaseRankWork(
                rank=r,
                kept_points=int(round(kept_points[r])),
                active_pairs_by_level={l: int(round(p[r])) for l, p in active_pairs.items()},
                fixed_pairs_by_level={l: int(round(p[r])) for l, p in fixed_pairs.items()},
                halo_points=int(round(halo[r])),
            )
            for r in range(layout.world_size)
        )
        return PhaseWorkload(
            start, end, ranks,
            active=tuple(int(np.count_nonzero(np.asarray(r) == Role.ACTIVE)) for r in roles),
            fixed=tuple(int(np.count_nonzero(np.asarray(r) == Role.FIXED)) for r in roles),
            exact=self.exact,
        )


def phase_workload(exp: Experiment, layout: ParallelLayout, roles: Sequence[np.ndarray], epoch: int = 0) -> PhaseWorkload:
    """Every rank's work per step under ``roles`` for the training points of sampling ``epoch``
    (pure; no messages). For several phases build one :class:`PhaseCounter`."""
    return PhaseCounter(exp, layout, epoch).work(roles)


def schedule_work(exp: Experiment, layout: ParallelLayout) -> dict[str, PhaseWorkload]:
    """The Adam phases of ``exp.schedule`` worth reporting: ``first``, ``busiest`` (the most
    active pairs on one rank) and ``last``, by label (one phase may carry several labels: the
    keys map to the same object)."""
    phases = exp.schedule.phases()
    if not phases:  # no Adam steps (L-BFGS only: every subdomain active)
        return {}
    counter = PhaseCounter(exp, layout)
    work = [counter.work(exp.schedule.roles_at(start), start, end) for start, end in phases]
    return {"first": work[0], "busiest": max(work, key=lambda w: w.max_active_pairs), "last": work[-1]}
