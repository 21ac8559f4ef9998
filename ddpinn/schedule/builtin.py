"""The built-in subdomain schedules: all-active, a sweep along one input axis, coarse-to-fine.

Defines :class:`AllActive` (every subdomain trains at every step: the plain run),
:class:`Sweep` (time-marching: a band moving along an axis; behind it frozen, ahead of it off)
and :class:`CoarseToFine` (level l switched on at step ``starts[l]``). Built by
:func:`ddpinn.schedule.make_schedule` from the ``schedule:`` config section, which has already
checked their arguments. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ddpinn.schedule.base import Role, ScheduleContext, SubdomainSchedule

__all__ = ["AllActive", "CoarseToFine", "Sweep"]


def _levels_text(levels: Sequence[int]) -> str:
    return ", ".join(str(l + 1) for l in levels)


class AllActive(SubdomainSchedule):
    """Every subdomain active at every step (the default; the run takes the plain code path)."""

    all_active = True

    def roles(self, step: int) -> list[np.ndarray]:
        return [np.full(n, Role.ACTIVE, dtype=np.int8) for n in self.context.level_sizes]

    def transitions(self) -> list[int]:
        return []

    def describe(self) -> str:
        return "all subdomains active"


class Sweep(SubdomainSchedule):
    """A band ``[lo + k·stride, lo + k·stride + width]`` along input ``axis``, k = step // every,
    which stops moving once its upper end reaches the domain's end. A swept subdomain is ACTIVE
    while its centre lies in the band (ends included), FIXED once the band has passed it (centre
    below the band) and OFF until the band reaches it. Levels not in ``levels`` (0-based) stay
    active throughout.

    ``every``: steps per move (None: the Adam steps spread evenly over the band positions).
    """

    def __init__(self, context: ScheduleContext, *, axis: str, width: float, stride: float,
                 every: int | None = None, levels: Sequence[int] | None = None) -> None:
        super().__init__(context)
        domain = context.decomposition.domain
        self.axis_name, self.axis = axis, context.axis(axis)
        self.width, self.stride = float(width), float(stride)
        self.lo, self.hi = domain.lo[self.axis], domain.hi[self.axis]
        self.levels = list(range(context.decomposition.n_levels)) if levels is None else sorted(levels)
        self.moves = max(0, math.ceil((self.hi - self.lo - self.width) / self.stride - 1e-12))
        """Moves until the band's upper end reaches the domain's end (band positions: moves + 1)."""
        self.every = every if every is not None else max(1, math.ceil(context.adam_steps / (self.moves + 1)))
        self.centres = [level.subdomain_centres()[:, self.axis] for level in context.decomposition.levels]

    def band(self, step: int) -> tuple[float, float]:
        """The band (lower, upper end) in axis units at Adam step ``step``."""
        k = min(step // self.every, self.moves)
        start = self.lo + k * self.stride
        return start, start + self.width

    def roles(self, step: int) -> list[np.ndarray]:
        lo, hi = self.band(step)
        out = []
        for level, centres in enumerate(self.centres):
            roles = np.full(centres.size, Role.ACTIVE, dtype=np.int8)
            if level in self.levels:
                roles[centres < lo] = Role.FIXED
                roles[centres > hi] = Role.OFF
            out.append(roles)
        return out

    def transitions(self) -> list[int]:
        marks, previous = [], self.roles(0)
        for k in range(1, self.moves + 1):
            step = k * self.every
            if step >= self.adam_steps:
                break
            current = self.roles(step)
            if any(not np.array_equal(a, b) for a, b in zip(previous, current)):
                marks.append(step)
            previous = current
        return marks

    def describe(self) -> str:
        unswept = [l for l in range(self.decomposition.n_levels) if l not in self.levels]
        text = (f"sweep along {self.axis_name}: a band {self.width:g} wide moving by {self.stride:g} every "
                f"{self.every} steps ({self.moves + 1} positions, {len(self.transitions())} transitions), "
                f"level(s) {_levels_text(self.levels)} swept")
        text += f", level(s) {_levels_text(unswept)} active throughout" if unswept else ""
        return text + self.lr_factors_text()


class CoarseToFine(SubdomainSchedule):
    """Level l OFF before step ``starts[l]`` and ACTIVE from it on (``starts[0]`` is 0). With
    ``fix_coarser``, a level becomes FIXED once a finer level switches on (only the finest
    started level then trains)."""

    def __init__(self, context: ScheduleContext, *, starts: Sequence[int], fix_coarser: bool = False) -> None:
        super().__init__(context)
        self.starts = [int(s) for s in starts]
        self.fix_coarser = fix_coarser

    def roles(self, step: int) -> list[np.ndarray]:
        started = [s <= step for s in self.starts]
        finest = max(l for l, on in enumerate(started) if on) if any(started) else -1
        out = []
        for level, n in enumerate(self.context.level_sizes):
            if not started[level]:
                role = Role.OFF
            elif self.fix_coarser and level < finest:
                role = Role.FIXED
            else:
                role = Role.ACTIVE
            out.append(np.full(n, role, dtype=np.int8))
        return out

    def transitions(self) -> list[int]:
        return sorted({s for s in self.starts if 0 < s < self.adam_steps})

    def describe(self) -> str:
        text = "coarse to fine: " + ", ".join(f"level {l + 1} from step {s}" for l, s in enumerate(self.starts))
        if self.fix_coarser:
            text += ", coarser levels fixed once a finer one starts"
        return text + self.lr_factors_text()
