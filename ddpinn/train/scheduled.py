"""The training batch of one schedule phase: kept points, active coverages, fixed sums.

Defines :func:`kept_points` (which of a rank's points a schedule phase trains on) and
:func:`phase_batch`, which builds the rank's batch for a phase: points covered by no ACTIVE
subdomain are dropped, OFF subdomains are left out of the batch (and of the partition of unity),
and the FIXED subdomains' contribution is evaluated once, without gradient, into
``batch.fixed_sums``, so that a training step runs forward and backward through the ACTIVE
subdomains only. Used by :class:`~ddpinn.train.points.TrainingPoints` at the start of each
phase; all-active runs never come here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ddpinn.geometry import level_pairs
from ddpinn.model.batch import EvaluationBatch, select_rows
from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.batching import BatchFactory
from ddpinn.schedule import Role

__all__ = ["kept_points", "phase_batch"]


def kept_points(decomposition, roles: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """[n] bool: the points of ``x`` ([n, dim] float64) inside some ACTIVE subdomain of any level
    (geometry only: every rank decides for its own points without communication)."""
    keep = np.zeros(x.shape[0], dtype=bool)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    for level, level_roles in zip(decomposition.levels, roles):
        points, ids = level_pairs(level, xt)
        active = torch.from_numpy(level_roles == Role.ACTIVE)[ids]
        keep[points[active].numpy()] = True
    return keep


def phase_batch(batches: BatchFactory, model: FBPINN, roles: Sequence[np.ndarray],
                groups: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray]) -> EvaluationBatch:
    """The rank's training batch for a phase with ``roles`` (per level [n_subdomains] Role by
    global id): own points ``groups`` (name -> [n, dim]) and observations ``data`` (name -> [n, k],
    rows aligned) restricted to the kept points, coverages of the ACTIVE subdomains, and the
    FIXED ones' partial sums at every evaluation row. A collective (the halo exchange plan; the
    fixed sums of partitioned levels travel with the active ones in every step's exchange)."""
    from ddpinn.parallel.exchange.plan import build_distributed_batch

    exp = batches.exp
    kept, kept_data = {}, {}
    for name, x in groups.items():
        mask = kept_points(exp.decomposition, roles, x)
        kept[name] = x[mask]
        if name in data:
            kept_data[name] = np.asarray(data[name])[mask]
    present = [r != Role.OFF for r in roles]
    full = build_distributed_batch(exp, batches.layout, batches.comm, kept, exp.spec, batches.held,
                                   batches.device, kept_data, present=present)
    active, fixed = [], []
    for cov, level_roles in zip(full.levels, roles):
        role = torch.from_numpy(level_roles[cov.subdomain_ids.cpu().numpy()]).to(cov.point_index.device)
        active.append(select_rows(cov, role == Role.ACTIVE))
        fixed.append(select_rows(cov, role == Role.FIXED))
    fixed_sums = None
    if any(c.n_pairs for c in fixed):
        with torch.no_grad():
            fixed_sums = model.partial_sums(dataclasses.replace(full, levels=tuple(fixed)))
    return dataclasses.replace(full, levels=tuple(active), fixed_sums=fixed_sums)
