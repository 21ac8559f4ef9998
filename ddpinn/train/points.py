"""The training points a rank holds now, their batch, and their life through a run.

Defines :class:`TrainingPoints`: it asks the run's :class:`~ddpinn.points.PointSource` for points
at the start and at each sampling event, builds their batch (with the exchange plan) once per
point set, tells the weighting so per-point state follows its points, and gives the checkpoint
the points with their per-point state (restoring them on any rank count). With a subdomain
schedule it also rebuilds the batch at each schedule transition (the points the phase trains on,
its active subdomains and the fixed ones' constant sums: :mod:`ddpinn.train.scheduled`) and tells
the optimiser the phase's roles; the point set itself, and so the checkpoint, keeps every point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.batching import BatchFactory
from ddpinn.points import PointSet, PointSource
from ddpinn.schedule import SubdomainSchedule, role_counts
from ddpinn.train.checkpoint import Checkpoint, points_in_block
from ddpinn.train.engine import LossEngine
from ddpinn.train.scheduled import phase_batch

__all__ = ["TrainingPoints", "PointCounts"]


class PointCounts(dict):
    """Collocation points per rank (all ranks), with the imbalance max / mean."""

    @property
    def imbalance(self) -> float:
        values = list(self.values())
        mean = sum(values) / len(values)
        return max(values) / mean if mean else 1.0

    def describe(self) -> str:
        values = list(self.values())
        return f"points/rank {min(values)}-{max(values)} (imbalance {self.imbalance:.2f})"


class TrainingPoints:
    def __init__(self, source: PointSource, batches: BatchFactory, engine: LossEngine,
                 record_dir: Path | None = None, *, schedule: SubdomainSchedule | None = None,
                 on_roles: Callable[[list[np.ndarray]], None] | None = None,
                 message: Callable[[str], None] | None = None) -> None:
        """``record_dir``: where each rank writes its collocation points at every sampling event
        (``event_<k>_rank<r>.npy``, [n, dim]), for plots of how adaptive sampling moved them.
        ``schedule``: the subdomain schedule (an all-active one takes the plain path);
        ``on_roles``: told the roles of each schedule phase as it starts (the optimiser);
        ``message``: prints a line (on rank 0) at each phase start."""
        self.source, self.batches, self.engine, self.record_dir = source, batches, engine, record_dir
        self.schedule = None if schedule is None or schedule.all_active else schedule
        self.on_roles, self.message = on_roles, message
        self.points: PointSet | None = None
        self.batch: EvaluationBatch | None = None
        self._counts: PointCounts | None = None
        self.phase: int | None = None
        """First step of the schedule phase the batch was built for (None without a schedule)."""
        self.roles: list[np.ndarray] | None = None
        """The roles of that phase: per level [n_subdomains] Role by global id."""

    # ------------------------------------------------------------------ life
    def start(self, step: int, checkpoint: Checkpoint | None) -> str | None:
        """The points in effect at ``step``: the source's initial ones, or those stored in
        ``checkpoint`` with their per-point state. Returns a note for the user when the
        checkpoint's points no longer match the sampling config (they are then drawn anew)."""
        if self.schedule is not None:
            self.phase = self.schedule.phase_start(step)
        if checkpoint is None:
            self._use(self.source.initial())
            self._record(0)
            return None
        stored = points_in_block(checkpoint, self.batches.block)
        points, note = self.source.restore(step, {g: fields["x"] for g, fields in stored.items()})
        self.engine.weighting.load_point_state({g: {k: v for k, v in f.items() if k != "x"} for g, f in stored.items()})
        self._use(points)
        return note

    def refresh_if_due(self, step: int) -> bool:
        """New points from the source when a sampling event falls before ``step``, and a new batch
        when a schedule phase starts at ``step`` (both collectives, on every rank at once)."""
        due = self.source.due(step)
        transition = self.schedule is not None and self.schedule.phase_start(step) != self.phase
        if not (due or transition):
            return False
        if transition:
            self.phase = self.schedule.phase_start(step)
        if due:
            self._use(self.source.refresh(step, self.points, self.score))
            self._record(self.source.event(step))
        else:
            self._use(self.points)
        return True

    def _record(self, event: int) -> None:
        if self.record_dir is None:
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.record_dir / f"event_{event:04d}_rank{self.batches.comm.rank}.npy", self.points.groups["pde"])

    def score(self, groups: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """|r| of the current model at own points ``groups`` (name -> [n, dim]); a collective."""
        return self.engine.residual_norms(self.batches.batch(dict(groups)))

    def _use(self, points: PointSet) -> None:
        self.points, self._counts = points, None
        if self.schedule is None:
            self.batch = self.batches.training_batch(points.groups)
        else:
            self.roles = self.schedule.roles_at(self.phase)
            self.batch = phase_batch(self.batches, self.engine.model, self.roles, points.groups,
                                     self.batches.exp.observations(self.batches.block))
            if self.on_roles is not None:
                self.on_roles(self.roles)
            if self.message is not None:
                self.message(self.describe_phase())
        self.engine.weighting.on_points(points, self.batch)

    def describe_phase(self) -> str:
        """The schedule phase in effect: its steps, the roles per level and the points kept (a
        collective: the global point count)."""
        end = next((t for t in [*self.schedule.transitions(), self.schedule.adam_steps] if t > self.phase), None)
        steps = f"steps {self.phase}-{end - 1}" if end is not None else f"from step {self.phase} (L-BFGS)"
        levels = "; ".join(f"level {l + 1}: {c['active']} active, {c['fixed']} fixed, {c['off']} off"
                           for l, c in enumerate(role_counts(self.roles)))
        total = sum(self.counts().values())
        return f"schedule {steps}: {levels}; trains on {self.batch.global_counts['pde']} of {total} collocation points"

    # ------------------------------------------------------------------ reporting and checkpoints
    def counts(self) -> PointCounts:
        """Collocation (``pde``) points of every rank; a collective the first time after the
        points change."""
        if self._counts is not None:
            return self._counts
        local = torch.zeros(self.batches.comm.world_size, dtype=torch.float64)
        local[self.batches.comm.rank] = len(self.points.groups["pde"])
        total = self.batches.comm.all_reduce_sum(local)
        self._counts = PointCounts({r: int(v) for r, v in enumerate(total.tolist())})
        return self._counts

    def cell_weights(self) -> list[np.ndarray]:
        """Collocation points of all ranks per cell slab along each axis of the sampling cell grid
        (what :meth:`~ddpinn.parallel.layout.ParallelLayout.recut` balances); one all-reduce."""
        exp, x = self.batches.exp, self.points.groups["pde"]
        dom, cells = exp.decomposition.domain, exp.cells
        local = []
        for a, n in enumerate(cells):
            edges = np.linspace(dom.lo[a], dom.hi[a], n + 1)
            index = np.clip(np.searchsorted(edges, x[:, a], side="right") - 1, 0, n - 1)
            local.append(np.bincount(index, minlength=n).astype(np.float64))
        total = self.batches.comm.all_reduce_sum(torch.from_numpy(np.concatenate(local))).numpy()
        return np.split(total, np.cumsum(cells)[:-1])

    def arrays(self) -> dict[str, np.ndarray]:
        """This rank's per-point arrays for the checkpoint: ``points/<group>/x`` and each
        per-point state field of the weighting, rows aligned."""
        out = {f"points/{g}/x": x for g, x in self.points.groups.items()}
        for group, fields in self.engine.weighting.point_state().items():
            for name, rows in fields.items():
                out[f"points/{group}/{name}"] = rows
        return out
