"""The exchange plan: which partial sums go where, built once per point sampling.

Defines :class:`ExchangePlan` (a frozen, printable, rank-local view shaped like a PETSc star
forest) and :func:`build_distributed_batch`, which samples nothing itself: it takes the rank's
own points, sends each neighbour the coordinates of the own points that the neighbour's
partitioned subdomains cover (once per sampling), receives its halo points the same way, and
builds the evaluation batch and the plan. With finite-difference derivatives the rank's
evaluated points are the stencil points of its own points (a stencil point outside the block is
still evaluated for, and summed into, the rank of the point it serves).

Direction: a partitioned subdomain is evaluated by its owner on every point of its support.
The windowed partial sums at a halo point therefore flow *from* the evaluating rank *to* the
point's owner (a reduce-add, forward) and the gradients flow back (a broadcast, backward).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddpinn.geometry import level_pairs
from ddpinn.jets import JetSpec
from ddpinn.model.batch import EvaluationBatch, build_batch
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["ExchangePlan", "build_distributed_batch", "halo_requests"]


@dataclass(frozen=True, eq=False)
class ExchangePlan:
    """Rank ``rank``'s side of the halo exchange.

    ``n_own``: own points (rows ``[0, n_own)`` of the partial-sum array); ``n_eval``: own + halo rows.
    ``halo_rows[q]``: rows holding the halo points owned by rank q, in q's order; their partial
    sums are sent to q. ``owned_rows[r]``: own rows that rank r evaluates; r's partial sums are
    added into them. Both maps list every neighbour (possibly with no rows), so every pair of
    neighbours calls send and receive on each other.
    """

    rank: int
    n_own: int
    n_eval: int
    halo_rows: dict[int, Tensor]
    owned_rows: dict[int, Tensor]

    @property
    def neighbours(self) -> list[int]:
        return sorted(set(self.halo_rows) | set(self.owned_rows))

    def values_sent(self) -> int:
        """Rows sent per forward exchange (the backward sends the rows it receives here)."""
        return sum(int(r.numel()) for r in self.halo_rows.values())

    def values_received(self) -> int:
        return sum(int(r.numel()) for r in self.owned_rows.values())

    def __str__(self) -> str:
        lines = [f"ExchangePlan(rank {self.rank}: {self.n_own} own + {self.n_eval - self.n_own} halo rows)"]
        for q in self.neighbours:
            out = int(self.halo_rows[q].numel()) if q in self.halo_rows else 0
            inn = int(self.owned_rows[q].numel()) if q in self.owned_rows else 0
            lines.append(f"  <-> rank {q}: send {out} halo rows, receive into {inn} own rows")
        return "\n".join(lines)


def halo_requests(layout: ParallelLayout, rank: int, x_own: np.ndarray) -> dict[int, np.ndarray]:
    """For each other rank r, the own points (sorted row indices) covered by a subdomain that r
    owns on some partitioned level: r must evaluate them and return its partial sums."""
    n = x_own.shape[0]
    codes = []
    x = torch.from_numpy(np.ascontiguousarray(x_own, dtype=np.float64))
    for l, level in enumerate(layout.decomposition.levels):
        if not layout.is_partitioned(l) or n == 0:
            continue
        points, ids = level_pairs(level, x)
        owners = layout.owners[l][ids.numpy()]
        other = owners != rank
        codes.append(owners[other].astype(np.int64) * n + points.numpy()[other])
    codes = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    owner, point = np.divmod(codes, max(n, 1))
    return {int(r): point[owner == r] for r in np.unique(owner)}


def build_distributed_batch(
    exp,
    layout: ParallelLayout,
    comm: Communicator,
    groups: Mapping[str, np.ndarray],
    spec: JetSpec,
    held: Sequence[np.ndarray],
    device: torch.device,
    data: Mapping[str, np.ndarray] | None = None,
    present: Sequence[np.ndarray] | None = None,
) -> EvaluationBatch:
    """The rank's batch over own + halo points, with its :class:`ExchangePlan` attached.
    ``present[l]``: [n_subdomains] bool, the subdomains a schedule evaluates (default all).
    With ``exp.finite_difference`` and derivatives in ``spec``, the own rows are the own points'
    stencil points."""
    rank = comm.rank
    names = list(groups)
    x_own = np.concatenate([np.asarray(groups[g], dtype=np.float64).reshape(-1, exp.problem.dim) for g in names])
    fd = exp.finite_difference
    stencil = fd.stencil(x_own, spec) if fd is not None and len(spec) > 1 else None
    evaluated = x_own if stencil is None else stencil.points
    n_own = evaluated.shape[0]
    neighbours = layout.neighbours(rank)
    requests = halo_requests(layout, rank, evaluated)
    if stencil is not None:
        neighbours = _peers_with_requests(comm, neighbours, requests)
    unexpected = set(requests) - set(neighbours)
    if unexpected:
        raise RuntimeError(f"rank {rank}: halo requests from non-neighbours {sorted(unexpected)}")
    outgoing = {q: requests.get(q, np.zeros(0, dtype=np.int64)) for q in neighbours}

    # Once per sampling: how many halo points each neighbour sends, then their coordinates.
    counts = comm.exchange(
        {q: torch.tensor([len(rows)], dtype=torch.int64) for q, rows in outgoing.items()},
        {q: (1,) for q in neighbours},
        torch.int64,
    )
    coords = comm.exchange(
        {q: torch.from_numpy(evaluated[rows]) for q, rows in outgoing.items()},
        {q: (int(counts[q][0]), exp.problem.dim) for q in neighbours},
        torch.float64,
    )
    halo_parts, halo_rows, offset = [], {}, n_own
    for q in neighbours:
        part = coords[q].cpu().numpy().reshape(-1, exp.problem.dim)
        halo_parts.append(part)
        halo_rows[q] = torch.arange(offset, offset + part.shape[0], device=device)
        offset += part.shape[0]
    halo = np.concatenate(halo_parts) if halo_parts else np.zeros((0, exp.problem.dim))

    totals = comm.all_reduce_sum(torch.tensor([float(len(groups[g])) for g in names], dtype=torch.float64))
    plan = ExchangePlan(
        rank=rank,
        n_own=n_own,
        n_eval=n_own + halo.shape[0],
        halo_rows=halo_rows,
        owned_rows={q: torch.from_numpy(rows).to(device) for q, rows in outgoing.items()},
    )
    return build_batch(
        exp.problem,
        exp.decomposition,
        exp.window,
        spec,
        groups,
        held=held,
        halo=halo,
        halo_levels=[layout.is_partitioned(l) for l in range(exp.decomposition.n_levels)],
        global_counts={g: int(round(v)) for g, v in zip(names, totals.tolist())},
        dtype=exp.dtype,
        device=device,
        exchange=plan,
        data=data,
        present=present,
        stencil=stencil,
    )


def _peers_with_requests(comm: Communicator, neighbours: list[int], requests: Mapping[int, np.ndarray]) -> list[int]:
    """``neighbours`` and every rank this one requests halo values from or is requested by (one
    all-reduce of a [world, world] matrix). A stencil point a step outside the block can lie in a
    subdomain whose owner reaches no point of the block, i.e. is no neighbour of the layout."""
    world = comm.world_size
    asked = torch.zeros(world, world, dtype=torch.float64)
    asked[comm.rank, [q for q, rows in requests.items() if len(rows)]] = 1.0
    asked = comm.all_reduce_sum(asked.reshape(-1)).reshape(world, world)
    linked = (asked[comm.rank] > 0) | (asked[:, comm.rank] > 0)
    return sorted(set(neighbours) | {q for q in torch.nonzero(linked).flatten().tolist() if q != comm.rank})
