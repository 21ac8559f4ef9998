"""The subdomain-schedule interface: which subdomains train, which are frozen and which are off.

Defines :class:`Role`, :class:`ScheduleContext` (what a schedule may use) and the abstract
:class:`SubdomainSchedule`, the seam that the built-in schedules (:mod:`ddpinn.schedule.builtin`)
and users' own schedulers (``schedule.kind: path/to/file.py:ClassName``) implement. The trainer's
point lifecycle asks it for the roles of each schedule phase, the optimiser for per-level
learning-rate factors, the partition's cost model for how long each subdomain is active.

Pure geometry level: numpy only, no torch, no torch.distributed; every rank computes the same
roles for every subdomain (by global id), so no communication is needed to agree on them.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ddpinn.geometry.decomposition import Decomposition

__all__ = ["Role", "ScheduleContext", "SubdomainSchedule", "role_counts"]


class Role(IntEnum):
    """What a subdomain does during a step."""

    OFF = 0
    """Not evaluated; points covered only by OFF (or FIXED) subdomains are dropped."""
    FIXED = 1
    """Evaluated where it covers kept points, without gradient; parameters and optimiser state frozen."""
    ACTIVE = 2
    """Evaluated and trained."""


@dataclass(frozen=True, eq=False)
class ScheduleContext:
    """What a schedule may use. ``decomposition``: the run's levels (global subdomain ids are the
    row-major ravel of each level's per-axis indices); ``input_names``: the problem's inputs in
    axis order (``("x", "t")``); ``adam_steps``: ``train.steps``; ``lr_factors``: per-level
    learning-rate factors from the config (None: all 1); ``params``: the config's
    ``schedule.params`` (for users' schedulers)."""

    decomposition: Decomposition
    input_names: tuple[str, ...]
    adam_steps: int
    lr_factors: tuple[float, ...] | None = None
    params: dict = field(default_factory=dict)

    @property
    def level_sizes(self) -> list[int]:
        return [level.n_subdomains for level in self.decomposition.levels]

    def axis(self, name: str) -> int:
        """The axis index of input ``name`` (KeyError-free callers check ``name in input_names``)."""
        return self.input_names.index(name)


class SubdomainSchedule(ABC):
    """Roles of every subdomain at every Adam step. Subclass it (in your own file) and implement
    :meth:`roles` and :meth:`transitions`; the roles must stay constant between two transitions
    (ddpinn evaluates them once per schedule phase). During L-BFGS (steps >= ``adam_steps``)
    every subdomain is active: the final refinement trains the whole model jointly."""

    all_active: bool = False
    """True only for the schedule that never freezes nor switches off anything: the run then takes
    the plain code path (fused Adam, no role filtering)."""

    def __init__(self, context: ScheduleContext) -> None:
        self.context = context

    @property
    def decomposition(self) -> Decomposition:
        return self.context.decomposition

    @property
    def adam_steps(self) -> int:
        return self.context.adam_steps

    @abstractmethod
    def roles(self, step: int) -> list[np.ndarray]:
        """Per level: ``[n_subdomains]`` int8 :class:`Role` values by global subdomain id, for Adam
        step ``step`` (0-based, ``0 <= step < adam_steps``)."""

    @abstractmethod
    def transitions(self) -> list[int]:
        """Sorted steps in ``(0, adam_steps)`` at which the roles change."""

    def level_lr_factors(self) -> list[float]:
        """Per-level factor on the learning rate (the LR schedule's value times this)."""
        factors = self.context.lr_factors
        return list(factors) if factors is not None else [1.0] * self.decomposition.n_levels

    def describe(self) -> str:
        """One line for the start-up message and ``ddpinn check``."""
        return f"{type(self).__name__} ({len(self.transitions())} transition(s))"

    # ------------------------------------------------------------------ derived, not overridden
    def lr_factors_text(self) -> str:
        """``"; lr factors 1, 0.5"`` when some level's factor is not 1, else empty."""
        factors = self.level_lr_factors()
        return "; lr factors " + ", ".join(f"{f:g}" for f in factors) if any(f != 1.0 for f in factors) else ""

    def phase_start(self, step: int) -> int:
        """The first step of the schedule phase holding ``step``: 0, a transition, or
        ``adam_steps`` (the L-BFGS phase)."""
        if step >= self.adam_steps:
            return self.adam_steps
        marks = self.transitions()
        i = bisect.bisect_right(marks, step)
        return marks[i - 1] if i else 0

    def roles_at(self, step: int) -> list[np.ndarray]:
        """:meth:`roles` during Adam, every subdomain ACTIVE from ``adam_steps`` on (L-BFGS)."""
        if step >= self.adam_steps:
            return [np.full(n, Role.ACTIVE, dtype=np.int8) for n in self.context.level_sizes]
        return [np.asarray(r, dtype=np.int8) for r in self.roles(step)]

    def phases(self) -> list[tuple[int, int]]:
        """The Adam phases as ``(first step, end step)`` pairs, end exclusive."""
        marks = [0, *self.transitions(), self.adam_steps]
        return [(a, b) for a, b in itertools.pairwise(marks) if b > a]

    def active_steps(self) -> list[np.ndarray]:
        """Per level: ``[n_subdomains]`` Adam steps during which each subdomain is ACTIVE (what a
        cost model weighs a subdomain's work by)."""
        total = [np.zeros(n, dtype=np.int64) for n in self.context.level_sizes]
        for start, end in self.phases():
            for acc, roles in zip(total, self.roles_at(start)):
                acc += (roles == Role.ACTIVE) * (end - start)
        return total


def role_counts(roles: Sequence[np.ndarray]) -> list[dict[str, int]]:
    """Per level: how many subdomains are active, fixed and off (for progress messages)."""
    return [{r.name.lower(): int(np.count_nonzero(level == r)) for r in (Role.ACTIVE, Role.FIXED, Role.OFF)}
            for level in roles]
