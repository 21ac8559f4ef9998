"""Per-rank work and traffic of a layout, computed without any process group.

Defines :class:`RankTraffic` and :func:`rank_traffic`: for one rank of a layout, its own
points, its halo points (from the same ``halo_requests`` the exchange plan is built from), the
(point, subdomain) pairs it evaluates, its neighbours, the values it sends per step, and the
*analytic* halo volume: the points in the region by which the rank's owned subdomain boxes
stick out of its block, counted per axis by :mod:`ddpinn.parallel.workload` (the box model).
Used by the step profiler and the scaling model in ``benchmarks/``.

With ``model.derivatives: fd`` the networks evaluate value-only stencil points instead of jets at
the points (:class:`~ddpinn.parallel.workload.EvaluatedRows`): halo and requested rows, pairs
and the analytic volumes count stencil points, and one value per output crosses per row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ddpinn.build import Experiment
from ddpinn.geometry import level_pairs
from ddpinn.parallel.exchange.plan import halo_requests
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.workload import EvaluatedRows, Intervals, PointCounter, owned_regions, union_counts

__all__ = ["RankTraffic", "rank_traffic", "analytic_halo_points"]


@dataclass(frozen=True)
class RankTraffic:
    """``own_points``: the rank's points; halo, requested and pairs: evaluated rows (the points,
    or their stencil points under fd); ``values_per_point``: values per exchanged row and
    direction (jets × outputs, the value only under fd)."""

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


def analytic_halo_points(exp: Experiment, layout: ParallelLayout, rank: int) -> tuple[float, float]:
    """(halo points of ``rank``, own points that other ranks evaluate) by the box model of
    :mod:`ddpinn.parallel.workload`: the points in the union of the regions a rank's partitioned
    subdomains cover, outside its block; and in its block, inside the other ranks' regions."""
    partitioned = [l for l in range(exp.decomposition.n_levels) if layout.is_partitioned(l)]
    if not partitioned:
        return 0.0, 0.0
    counter = PointCounter(exp)
    regions = [owned_regions(layout, l) for l in partitioned]
    blocks = [Intervals.blocks(layout, a) for a in range(exp.problem.dim)]
    everywhere = union_counts(counter, regions)[0].reshape(-1)
    inside = union_counts(counter, regions, blocks)[0].reshape(-1)
    # Every block column's regions, counted in this rank's block: [q] = q's region within rank's block.
    mine = layout.block_index(rank)
    here = [blocks[a].take(np.full(layout.grid[a], mine[a])) for a in range(exp.problem.dim)]
    in_mine = union_counts(counter, regions, here)[0].reshape(-1)
    return float(everywhere[rank] - inside[rank]), float(in_mine.sum() - in_mine[rank])


def rank_traffic(exp: Experiment, layout: ParallelLayout, rank: int, epoch: int = 0) -> RankTraffic:
    """Work and traffic of ``rank`` for the collocation points of ``epoch`` (pure; no messages)."""
    dec = exp.decomposition
    evaluated = EvaluatedRows.of(exp)

    def points(r: int) -> np.ndarray:
        groups = exp.training_points(epoch, layout.block(r))
        return np.concatenate([np.asarray(v).reshape(-1, exp.problem.dim) for v in groups.values()])

    def own(r: int) -> np.ndarray:
        x = points(r)
        return x if evaluated.per_point == 1 else exp.finite_difference.stencil(x, exp.spec).points

    n_own_points = points(rank).shape[0]
    x_own = own(rank)
    # A stencil point can lie in a subdomain of a rank that is no neighbour in the layout.
    peers = layout.neighbours(rank) if evaluated.per_point == 1 else [q for q in range(layout.world_size) if q != rank]
    peer_rows = {q: own(q) for q in peers}
    halo_parts = {q: halo_requests(layout, q, x_q).get(rank) for q, x_q in peer_rows.items()}
    halo_x = np.concatenate(
        [peer_rows[q][rows] for q, rows in halo_parts.items() if rows is not None and rows.size]
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

    analytic_halo, analytic_requested = analytic_halo_points(exp, layout, rank)
    return RankTraffic(
        rank=rank,
        own_points=int(n_own_points),
        halo_points=int(halo_x.shape[0]),
        halo_points_by_level=by_level,
        requested_points=int(requested),
        pairs=pairs,
        neighbours=len(layout.neighbours(rank)),
        replicated_parameters=replicated_params,
        values_per_point=len(evaluated.spec) * len(exp.problem.outputs),
        analytic_halo_points=analytic_halo * evaluated.per_point,
        analytic_requested_points=analytic_requested * evaluated.per_point,
    )
