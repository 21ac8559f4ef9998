"""The point-source interface and the point set it produces.

Defines :class:`PointSet` (a rank's own points per loss term, and where each came from, so that
per-point state such as self-adaptive weights can follow its point), :class:`SourceContext`
(what a source may use: the experiment, the rank's block, the communicator) and the
:class:`PointSource` base class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ddpinn.geometry import Block
from ddpinn.parallel.comm import Communicator

__all__ = ["PointSet", "PointSource", "Scorer", "SourceContext", "rows_of"]

Scorer = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
"""``score({"pde": x})`` -> ``{"pde": |r|}``: the residual norm of the current model at each
given own point ([n] float64). A collective: every rank calls it at the same event."""


@dataclass(frozen=True, eq=False)
class PointSet:
    """A rank's own points, one group per loss term (``pde`` first, then the soft constraints).

    ``groups[name]``: [n, dim] float64. ``origin[name]``: [n] int64, the row of the previous
    point set this point was kept from, or -1 for a new point; a group missing from ``origin``
    is entirely new. Per-point state moves with ``origin``.
    """

    groups: dict[str, np.ndarray]
    origin: dict[str, np.ndarray] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {name: int(x.shape[0]) for name, x in self.groups.items()}

    def kept_from(self, name: str) -> np.ndarray:
        """[n] rows of the previous set (-1 for new points) for group ``name``."""
        if name in self.origin:
            return self.origin[name]
        return np.full(self.groups[name].shape[0], -1, dtype=np.int64)

    @staticmethod
    def unchanged(groups: Mapping[str, np.ndarray]) -> PointSet:
        """``groups`` as the continuation of themselves (restored from a checkpoint, say)."""
        return PointSet(dict(groups), {k: np.arange(v.shape[0], dtype=np.int64) for k, v in groups.items()})


@dataclass(frozen=True, eq=False)
class SourceContext:
    """What a source may use. ``exp``: the :class:`~ddpinn.build.Experiment` (config, problem,
    cell grid, the seeded point sets); ``block``: this rank's ownership block; ``comm``: for the
    few global reductions a source needs (sums only, so results do not depend on the rank count)."""

    exp: object
    block: Block
    comm: Communicator


class PointSource(ABC):
    """Produces a rank's training points: :meth:`initial`, then :meth:`refresh` at the steps
    where :meth:`due` says so. Sources keep no state besides the point set the trainer holds
    (and checkpoints), so a resumed run continues exactly."""

    name: str = ""
    adaptive: bool = False
    """Whether the points depend on the model (residual-based), so are worth recording."""
    changes_points: bool = False
    """Whether the point set changes during the run (so the batch changes size)."""

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.exp.cfg

    @abstractmethod
    def initial(self) -> PointSet:
        """The points before the first step."""

    every: int = 0
    """Adam steps between refreshes (0: the points never change)."""

    def due(self, step: int) -> bool:
        """Whether new points are made before Adam step ``step`` (0-based): every :attr:`every`
        steps, never during L-BFGS, whose curvature pairs belong to one loss."""
        return bool(self.every) and 0 < step < self.cfg.train.steps and step % self.every == 0

    def event(self, step: int) -> int:
        """The sampling event number in effect at ``step`` (0 before the first refresh)."""
        return min(step, max(self.cfg.train.steps - 1, 0)) // self.every if self.every else 0

    def refresh(self, step: int, current: PointSet, score: Scorer) -> PointSet:
        """The points from ``step`` on; called on every rank when :meth:`due`."""
        raise NotImplementedError(f"{type(self).__name__} never refreshes its points")

    def regenerable(self, step: int) -> dict[str, np.ndarray]:
        """The groups whose points at ``step`` follow from the config and the step alone (drawn
        again on resume, not read back): by default every group, at :meth:`event`."""
        return self.ctx.exp.training_points(self.event(step), self.ctx.block)

    def restore(self, step: int, stored: Mapping[str, np.ndarray]) -> tuple[PointSet, str | None]:
        """The point set at ``step`` from a checkpoint's points in this rank's block (``stored``:
        group -> [n, dim], the checkpoint's order). ``origin`` indexes ``stored`` rows, so stored
        per-point state follows. Returns a note when a re-drawn group differs from the stored one
        (the sampling config changed): its per-point state then starts afresh."""
        regenerated = self.regenerable(step)
        names = ["pde", *(c.name for c in self.ctx.exp.problem.constraints())]
        groups, origin, changed = {}, {}, []
        for name in names:
            if name in regenerated:
                groups[name] = regenerated[name]
                origin[name] = rows_of(groups[name], stored.get(name))
                if (origin[name] < 0).any():
                    changed.append(name)
            elif name in stored:
                groups[name] = stored[name]
                origin[name] = np.arange(stored[name].shape[0], dtype=np.int64)
            else:
                raise ValueError(f"the checkpoint holds no points of term {name!r}, which {self.name} does not re-draw")
        note = None
        if changed:
            note = (f"the points of {changed} differ from the checkpoint's (was sampling changed?); they were drawn "
                    "from the current config and their per-point state starts afresh")
        return PointSet(groups, origin), note

    def describe(self) -> str:
        return self.name


def rows_of(points: np.ndarray, stored: np.ndarray | None) -> np.ndarray:
    """For each row of ``points``, the row of ``stored`` with the same coordinates (-1 if none)."""
    if stored is None or stored.shape[0] == 0:
        return np.full(points.shape[0], -1, dtype=np.int64)
    where = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(stored, dtype=np.float64))}
    rows = np.ascontiguousarray(points, dtype=np.float64)
    return np.array([where.get(row.tobytes(), -1) for row in rows], dtype=np.int64)
