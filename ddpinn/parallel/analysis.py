"""Per-rank work and traffic of a layout, computed without any process group.

Defines :class:`RankTraffic` and :func:`rank_traffic`: for one rank of a layout, its own
points, its halo points (from the same ``halo_requests`` the exchange plan is built from), the
(point, subdomain) pairs it evaluates, its neighbours, the values it sends per step, and the
*analytic* halo volume: point density times the volume by which the rank's owned subdomain
boxes stick out of its block (the box model behind the cost model). Used by the step profiler
and the scaling model in ``benchmarks/``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ddpinn.build import Experiment
from ddpinn.geometry import level_pairs
from ddpinn.parallel.exchange.plan import halo_requests
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["RankTraffic", "rank_traffic", "analytic_halo_points"]


@dataclass(frozen=True)
class RankTraffic:
    rank: int
    own_points: int
    halo_points: int
    halo_points_by_level: dict[int, int]
    requested_points: int
    pairs: int
    neighbours: int
    replicated_parameters: int
    values_per_point: int
    analytic_halo_points: float
    analytic_requested_points: float

    @property
    def values_sent_per_step(self) -> int:
        """Forward: partial sums at the halo points; backward: gradients at own requested points."""
        return (self.halo_points + self.requested_points) * self.values_per_point

    def as_dict(self) -> dict:
        out = asdict(self)
        out["values_sent_per_step"] = self.values_sent_per_step
        return out


@dataclass(frozen=True)
class _Interval:
    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool

    def __and__(self, other: _Interval) -> _Interval:
        lo = max(self.lo, other.lo)
        hi = min(self.hi, other.hi)
        lo_closed = (self.lo_closed or self.lo < lo) and (other.lo_closed or other.lo < lo)
        hi_closed = (self.hi_closed or self.hi > hi) and (other.hi_closed or other.hi > hi)
        return _Interval(lo, hi, lo_closed, hi_closed)


Box = tuple[_Interval, ...]


class _PointCounter:
    """Expected collocation points in a box: grid lines per axis for grid sampling (a thin halo
    holds a whole number of grid lines), point density times volume otherwise."""

    def __init__(self, exp: Experiment) -> None:
        from ddpinn.sampling import SamplingMethod, grid_shape

        dom = exp.decomposition.domain
        self.axes = None
        if exp.cfg.sampling.method == SamplingMethod.GRID:
            self.axes = [np.linspace(dom.lo[a], dom.hi[a], n) for a, n in enumerate(grid_shape(dom, exp.cfg.sampling.n))]
        self.density = exp.collocation_count / float(np.prod(dom.lengths))

    def box(self, box: Box) -> float:
        if any(i.hi < i.lo for i in box):
            return 0.0
        if self.axes is None:
            return self.density * float(np.prod([i.hi - i.lo for i in box]))
        total = 1.0
        for ax, i in zip(self.axes, box):
            lower = ax >= i.lo if i.lo_closed else ax > i.lo
            upper = ax <= i.hi if i.hi_closed else ax < i.hi
            total *= np.count_nonzero(lower & upper)
        return total

    def union(self, boxes: list[Box]) -> float:
        """Points in a union of boxes, by inclusion-exclusion (a handful of partitioned levels)."""
        total = 0.0
        for k in range(1, len(boxes) + 1):
            for subset in itertools.combinations(boxes, k):
                common = tuple(functools.reduce(lambda a, b: a & b, axis) for axis in zip(*subset))
                total += (-1) ** (k + 1) * self.box(common)
        return total


def _owned_regions(layout: ParallelLayout, rank: int) -> list[Box]:
    """Per partitioned level, the region covered by the rank's owned subdomains: their boxes form
    a tensor-product block, so the union is one open box (closed on the domain boundary)."""
    dom = layout.decomposition.domain
    regions = []
    for l, level in enumerate(layout.decomposition.levels):
        if not layout.is_partitioned(l):
            continue
        ids = np.nonzero(layout.owners[l] == rank)[0]
        if ids.size == 0:
            continue
        lo, hi = level.subdomain_boxes(ids)
        lo, hi = lo.min(0), hi.max(0)
        regions.append(tuple(
            _Interval(max(lo[a], dom.lo[a]), min(hi[a], dom.hi[a]), lo[a] <= dom.lo[a], hi[a] >= dom.hi[a])
            for a in range(level.dim)
        ))
    return regions


def _block_box(layout: ParallelLayout, rank: int) -> Box:
    block = layout.block(rank)
    return tuple(_Interval(l, h, True, c) for l, h, c in zip(block.lo, block.hi, block.closed_hi))


def analytic_halo_points(layout: ParallelLayout, rank: int, count: _PointCounter) -> tuple[float, float]:
    """(halo points of ``rank``, own points that neighbours evaluate) by the box model."""
    block = _block_box(layout, rank)
    mine = _owned_regions(layout, rank)
    inside = [tuple(a & b for a, b in zip(region, block)) for region in mine]
    halo = count.union(mine) - count.union(inside)
    requested = 0.0
    for q in layout.neighbours(rank):
        requested += count.union([tuple(a & b for a, b in zip(region, block)) for region in _owned_regions(layout, q)])
    return halo, requested


def rank_traffic(exp: Experiment, layout: ParallelLayout, rank: int, epoch: int = 0) -> RankTraffic:
    """Work and traffic of ``rank`` for the collocation points of ``epoch`` (pure; no messages)."""
    dec = exp.decomposition

    def own(r: int) -> np.ndarray:
        groups = exp.training_points(epoch, layout.block(r))
        return np.concatenate([np.asarray(v).reshape(-1, exp.problem.dim) for v in groups.values()])

    x_own = own(rank)
    halo_parts = [halo_requests(layout, q, own(q)).get(rank) for q in layout.neighbours(rank)]
    halo_x = np.concatenate(
        [own(q)[rows] for q, rows in zip(layout.neighbours(rank), halo_parts) if rows is not None and rows.size]
        or [np.zeros((0, exp.problem.dim))]
    )
    requested = sum(rows.size for rows in halo_requests(layout, rank, x_own).values())

    held = layout.held(rank)
    pairs, by_level, replicated_params = 0, {}, 0
    x_all = torch.from_numpy(np.concatenate([x_own, halo_x]))
    for l, level in enumerate(dec.levels):
        points = x_all if layout.is_partitioned(l) else x_all[: x_own.shape[0]]
        p, ids = level_pairs(level, points)
        mine = np.isin(ids.numpy(), held[l])
        pairs += int(mine.sum())
        if layout.is_partitioned(l):
            by_level[l + 1] = int(np.unique(p.numpy()[mine & (p.numpy() >= x_own.shape[0])]).size)
        else:
            replicated_params += exp.level_parameters(l)

    analytic_halo, analytic_requested = analytic_halo_points(layout, rank, _PointCounter(exp))
    return RankTraffic(
        rank=rank,
        own_points=int(x_own.shape[0]),
        halo_points=int(halo_x.shape[0]),
        halo_points_by_level=by_level,
        requested_points=int(requested),
        pairs=pairs,
        neighbours=len(layout.neighbours(rank)),
        replicated_parameters=replicated_params,
        values_per_point=len(exp.spec) * len(exp.problem.outputs),
        analytic_halo_points=analytic_halo,
        analytic_requested_points=analytic_requested,
    )
