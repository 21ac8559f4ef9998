"""From the ``schedule:`` config section to a checked :class:`SubdomainSchedule`.

Defines :func:`make_schedule`: it builds a built-in schedule or loads a user's class from
``path/to/file.py:ClassName`` (or ``package.module:ClassName``), checks the arguments against
the problem and the decomposition, and runs the schedule once over its phases, so a scheduler
that returns wrong shapes or values, or leaves nothing to train, is a :class:`ConfigError`
before any work. Called by :func:`ddpinn.build.build_experiment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddpinn.config import ConfigError
from ddpinn.schedule.base import Role, ScheduleContext, SubdomainSchedule
from ddpinn.schedule.builtin import AllActive, CoarseToFine, Sweep
from ddpinn.user_code import UserCodeError, load_user_class

if TYPE_CHECKING:
    from ddpinn.config import SubdomainScheduleConfig
    from ddpinn.geometry.decomposition import Decomposition

__all__ = ["check_schedule", "make_schedule", "schedule_class"]


def make_schedule(cfg: SubdomainScheduleConfig, decomposition: Decomposition, input_names: Sequence[str],
                  adam_steps: int, base_dir: Path | None = None) -> SubdomainSchedule:
    """The schedule of ``cfg`` (the ``schedule:`` section, already field-checked) for this
    decomposition and problem inputs; ``base_dir``: where a relative scheduler file is looked up."""
    n_levels = decomposition.n_levels
    if cfg.lr_factors is not None and len(cfg.lr_factors) != n_levels:
        raise ConfigError(f"schedule.lr_factors: {len(cfg.lr_factors)} factors for {n_levels} levels; give one per level")
    context = ScheduleContext(
        decomposition=decomposition, input_names=tuple(input_names), adam_steps=adam_steps,
        lr_factors=None if cfg.lr_factors is None else tuple(float(f) for f in cfg.lr_factors),
        params=dict(cfg.params),
    )
    if cfg.kind == "all_active":
        schedule: SubdomainSchedule = AllActive(context)
    elif cfg.kind == "sweep":
        schedule = _sweep(cfg, context)
    elif cfg.kind == "coarse_to_fine":
        schedule = _coarse_to_fine(cfg, context)
    else:
        cls = schedule_class(cfg.kind, base_dir)
        try:
            schedule = cls(context)
        except Exception as err:  # noqa: BLE001 - a user's class may fail in any way; report it as config
            raise ConfigError(f"schedule.kind: {cls.__name__}(context) failed: {type(err).__name__}: {err}") from None
    check_schedule(schedule, context)
    return schedule


def _sweep(cfg: SubdomainScheduleConfig, context: ScheduleContext) -> Sweep:
    names, n_levels = context.input_names, context.decomposition.n_levels
    if cfg.axis not in names:
        raise ConfigError(f"schedule.axis: {cfg.axis!r} is not an input of the problem (inputs {list(names)}); "
                          "set it to the input to sweep along, e.g. t")
    if cfg.width is None:
        raise ConfigError("schedule.width: a sweep needs the band width (in units of the swept axis), e.g. 0.25")
    levels = None
    if cfg.levels is not None:
        bad = [l for l in cfg.levels if not 1 <= l <= n_levels]
        if bad:
            raise ConfigError(f"schedule.levels: level {bad[0]} does not exist; levels are numbered 1..{n_levels}")
        levels = sorted({l - 1 for l in cfg.levels})
    sweep = Sweep(context, axis=cfg.axis, width=cfg.width, stride=cfg.stride if cfg.stride is not None else cfg.width,
                  every=cfg.every, levels=levels)
    # A centre that falls between two band positions would go from OFF to FIXED untrained.
    for level in sweep.levels:
        centres = sweep.centres[level]
        reached = np.zeros(centres.size, dtype=bool)
        for k in range(sweep.moves + 1):
            lo, hi = sweep.band(k * sweep.every)
            reached |= (centres >= lo) & (centres <= hi)
        if not reached.all():
            missed = np.unique(centres[~reached])
            raise ConfigError(
                f"schedule.stride: subdomains of level {level + 1} centred at {cfg.axis} = "
                f"{', '.join(f'{c:g}' for c in missed[:4])} are never inside the band (stride {sweep.stride:g} > "
                f"width {sweep.width:g} skips them); make stride <= width"
            )
    return sweep


def _coarse_to_fine(cfg: SubdomainScheduleConfig, context: ScheduleContext) -> CoarseToFine:
    n_levels, steps = context.decomposition.n_levels, context.adam_steps
    if cfg.starts is None:
        raise ConfigError(f"schedule.starts: coarse_to_fine needs the step at which each of the {n_levels} levels "
                          f"switches on, e.g. {[0] + [steps * l // n_levels for l in range(1, n_levels)]}")
    if len(cfg.starts) != n_levels:
        raise ConfigError(f"schedule.starts: {len(cfg.starts)} steps for {n_levels} levels; give one per level")
    if cfg.starts[0] != 0:
        raise ConfigError(f"schedule.starts: level 1 starts at step {cfg.starts[0]}; it must start at 0 "
                          "(something has to train from the first step)")
    late = [(l, s) for l, s in enumerate(cfg.starts) if s >= steps > 0 or (steps == 0 and s > 0)]
    if late:
        level, start = late[0]
        raise ConfigError(f"schedule.starts: level {level + 1} starts at step {start}, beyond the run's "
                          f"{steps} Adam steps (train.steps); it would never train: lower it below {steps}")
    return CoarseToFine(context, starts=cfg.starts, fix_coarser=cfg.fix_coarser)


def check_schedule(schedule: SubdomainSchedule, context: ScheduleContext) -> None:
    """Run ``schedule`` over its phases: transitions sorted inside ``(0, adam_steps)``, per level
    an int array of Role values of the level's size at each phase's first and last step (which
    must agree), something active in every phase, a positive lr factor per level."""
    name = type(schedule).__name__
    try:
        marks = [int(m) for m in schedule.transitions()]
        if marks != sorted(set(marks)) or any(not 0 < m < context.adam_steps for m in marks):
            raise ConfigError(f"schedule.kind: {name}.transitions() must be sorted distinct steps in "
                              f"(0, {context.adam_steps}), got {marks[:8]}")
        sizes = context.level_sizes
        for start, end in schedule.phases():
            first = _checked_roles(schedule.roles(start), sizes, f"{name}.roles({start})")
            last = _checked_roles(schedule.roles(end - 1), sizes, f"{name}.roles({end - 1})")
            if any(not np.array_equal(a, b) for a, b in zip(first, last)):
                raise ConfigError(f"schedule.kind: {name}.roles changes between steps {start} and {end - 1} "
                                  f"without a transition there; list every step where roles change in transitions()")
            if not any((r == Role.ACTIVE).any() for r in first):
                raise ConfigError(f"schedule: no subdomain is active at steps {start}..{end - 1} ({name}); "
                                  "nothing would train there (widen schedule.width, or start a level at 0)")
        factors = [float(f) for f in schedule.level_lr_factors()]
        if len(factors) != len(sizes) or not all(np.isfinite(f) and f > 0 for f in factors):
            raise ConfigError(f"schedule.lr_factors: need one factor > 0 per level ({len(sizes)}), got {factors}")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's schedule may fail in any way; report it as config
        raise ConfigError(f"schedule.kind: {name} failed when run over its phases: {type(err).__name__}: {err}") from None


def _checked_roles(roles, sizes: list[int], where: str) -> list[np.ndarray]:
    if not isinstance(roles, (list, tuple)) or len(roles) != len(sizes):
        raise ConfigError(f"schedule.kind: {where} must return a list of one array per level ({len(sizes)})")
    out = []
    for level, (r, n) in enumerate(zip(roles, sizes)):
        r = np.asarray(r)
        if r.shape != (n,) or r.dtype.kind not in "iu" or not np.isin(r, [int(x) for x in Role]).all():
            raise ConfigError(f"schedule.kind: {where}[{level}] must be [{n}] integer Role values (0 off, 1 fixed, "
                              f"2 active), got shape {r.shape} dtype {r.dtype}")
        out.append(r.astype(np.int8))
    return out


def schedule_class(reference: str, base_dir: Path | None = None) -> type[SubdomainSchedule]:
    """The class named by ``path/to/file.py:ClassName`` (relative to ``base_dir`` if not found
    from the working directory) or ``package.module:ClassName``; it must subclass
    :class:`SubdomainSchedule`."""
    try:
        cls = load_user_class(reference, SubdomainSchedule, base_dir)
    except UserCodeError as err:
        raise ConfigError(f"schedule.kind: {err}") from None
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise ConfigError(f"schedule.kind: {reference!r}: {cls.__name__} does not implement {', '.join(abstract)} "
                          "of the SubdomainSchedule interface")
    return cls
