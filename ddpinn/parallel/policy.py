"""Choosing each level's policy: the cost model that weighs halo traffic against all-reduce traffic.

Defines :func:`plan_layout` (the :class:`ParallelLayout` for a run and a world size) and
:func:`choose_policies`. A PARTITIONED level adds halo traffic — the points within reach of
its subdomains beyond the block, times the jet values, sent forward and back every step — while
a REPLICATED level adds its parameters to the global all-reduce (about twice their size per
rank for a ring all-reduce). Levels are considered from the finest: the halo of a coarser level
contains the finer ones', so only its extra reach costs; the first level that is cheaper
replicated ends the partitioned range. A level with fewer subdomains than ranks is replicated.

A subdomain schedule (``schedule:``) enters twice: the process grid leaves uncut the axes along
which the schedule moves its active subdomains (:func:`partition_axes`: a time sweep cut along
time would leave the later-time ranks idle until the band reaches them), and a level's halo
traffic counts only while its subdomains are active (:func:`level_costs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpinn.build import Experiment
from ddpinn.config import ConfigError
from ddpinn.geometry import Decomposition
from ddpinn.parallel.layout import LayoutError, LevelPolicy, ParallelLayout, process_grid
from ddpinn.sampling import SamplingMethod, grid_lines, grid_shape
from ddpinn.schedule import Role, SubdomainSchedule

__all__ = ["plan_layout", "plan_grid", "partition_axes", "swept_axes", "choose_policies", "LevelCost"]


@dataclass(frozen=True)
class LevelCost:
    """Floats per rank and step of each policy for one level (the cost model's estimate)."""

    level: int
    n_subdomains: int
    allreduce_floats: float
    extra_halo_floats: float


def _halo_points(exp: Experiment, grid: tuple[int, ...], reach: np.ndarray, n_points: int) -> float:
    """Expected points within ``reach`` (per axis) outside a typical block."""
    lengths = exp.decomposition.domain.lengths
    block = lengths / np.asarray(grid)
    # Interior blocks grow on both sides, boundary blocks on one: average (2 (g-1)) / g sides.
    sides = np.array([2.0 * (g - 1) / g for g in grid])
    grown = np.minimum(block + sides * reach, lengths)
    density = n_points / float(np.prod(lengths))
    return float(density * (np.prod(grown) - np.prod(block)))


def active_fractions(schedule: SubdomainSchedule) -> list[float]:
    """Per level: the share of (subdomain, Adam step) pairs in which a subdomain is active (1 for
    all-active; a level switched on halfway, 0.5)."""
    steps = schedule.adam_steps
    return [float(a.sum()) / (a.size * steps) if steps else 1.0 for a in schedule.active_steps()]


def level_costs(exp: Experiment, world_size: int) -> list[LevelCost]:
    """Per level, the floats per rank and step of replicating it (its all-reduce, which runs at
    every step whatever the schedule) and of partitioning it (its extra halo reach, weighted by
    the share of steps its subdomains are active: fixed and off subdomains exchange no values
    per step)."""
    grid = plan_grid(exp, world_size)
    n_points = exp.collocation_count
    values_per_point = len(exp.spec) * len(exp.problem.outputs) * 2  # forward values + backward gradients
    active = active_fractions(exp.schedule)
    costs, reach = [], np.zeros(exp.problem.dim)
    for l in reversed(range(exp.decomposition.n_levels)):
        level = exp.decomposition.levels[l]
        params = exp.level_parameters(l)
        new_reach = np.maximum(reach, np.array([w.max() / 2 for w in level.widths]))
        extra = _halo_points(exp, grid, new_reach, n_points) - _halo_points(exp, grid, reach, n_points)
        costs.append(LevelCost(
            l, level.n_subdomains, 2.0 * params * (world_size - 1) / world_size, extra * values_per_point * active[l]
        ))
        reach = new_reach
    return costs[::-1]


def swept_axes(schedule: SubdomainSchedule, decomposition: Decomposition) -> list[int]:
    """Axes along which ``schedule`` moves its active subdomains: axis a is swept when, in some
    phase, a level has active subdomains at some of its indices along a and none at others (a
    time sweep: t; coarse-to-fine switches whole levels, so no axis)."""
    swept = set()
    for start, _ in schedule.phases():
        for roles, level in zip(schedule.roles_at(start), decomposition.levels):
            active = (np.asarray(roles) == Role.ACTIVE).reshape(level.shape)
            if not active.any():
                continue
            for a in range(level.dim):
                along = active.any(axis=tuple(b for b in range(level.dim) if b != a))
                if not along.all():
                    swept.add(a)
    return sorted(swept)


def partition_axes(exp: Experiment, world_size: int) -> list[int]:
    """The axes the process grid may cut: ``parallel.partition_axes`` (input names) if set, else
    every axis but those the schedule sweeps along (:func:`swept_axes`), or every axis when the
    others cannot take ``world_size`` blocks."""
    names = list(exp.problem.inputs)
    requested = exp.cfg.parallel.partition_axes
    if requested != "auto":
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise ConfigError(f"parallel.partition_axes: {unknown[0]!r} is not an input of the problem (inputs {names})")
        return sorted(names.index(n) for n in requested)
    swept = swept_axes(exp.schedule, exp.decomposition)
    others = [a for a in range(len(names)) if a not in swept]
    if swept and others:
        try:
            process_grid(world_size, exp.cells, others)
            return others
        except LayoutError:
            pass  # too few cells across the swept axis: cut everything, as without a schedule
    return list(range(len(names)))


def plan_grid(exp: Experiment, world_size: int) -> tuple[int, ...]:
    """Blocks per axis for ``world_size`` ranks, cutting only :func:`partition_axes`."""
    axes = partition_axes(exp, world_size)
    try:
        return process_grid(world_size, exp.cells, axes)
    except LayoutError as err:
        if exp.cfg.parallel.partition_axes == "auto":
            raise
        inputs = exp.problem.inputs
        raise ConfigError(
            f"parallel.partition_axes: {world_size} ranks cannot be laid out cutting only "
            f"{[inputs[a] for a in axes]} (cells per axis {dict(zip(inputs, exp.cells))}, each block needs at least "
            f"one cell per axis); cut more axes, use fewer ranks or set it to auto"
        ) from err


def choose_policies(exp: Experiment, world_size: int) -> list[LevelPolicy]:
    """Per level, from ``parallel.level_policy`` where set, else from :func:`level_costs`."""
    requested = exp.cfg.parallel.level_policy
    n_levels = exp.decomposition.n_levels
    requested = requested if isinstance(requested, list) else [requested] * n_levels
    policies = [LevelPolicy.REPLICATED] * n_levels
    partitioning = True
    for cost in reversed(level_costs(exp, world_size)):
        l = cost.level
        eligible = cost.n_subdomains >= world_size
        if requested[l] == "auto":
            partitioning = partitioning and eligible and cost.extra_halo_floats < cost.allreduce_floats
            policies[l] = LevelPolicy.PARTITIONED if partitioning else LevelPolicy.REPLICATED
        elif requested[l] == "partitioned" and eligible:
            policies[l] = LevelPolicy.PARTITIONED
    return policies


def _cell_weights(exp: Experiment) -> list[np.ndarray] | None:
    """Collocation points per cell slab along each axis (exact for grid sampling)."""
    s, domain = exp.cfg.sampling, exp.decomposition.domain
    if exp.cfg.parallel.balance != "points" or s.method != SamplingMethod.GRID:
        return None
    shape = grid_shape(domain, s.n)
    weights = []
    for a, cells in enumerate(exp.cells):
        line = grid_lines(domain.lo[a], domain.hi[a], shape[a])
        edges = np.linspace(domain.lo[a], domain.hi[a], cells + 1)
        index = np.clip(np.searchsorted(edges, line, side="right") - 1, 0, cells - 1)
        weights.append(np.bincount(index, minlength=cells).astype(float))
    return weights


def plan_layout(exp: Experiment, world_size: int) -> ParallelLayout:
    """The partition for ``world_size`` ranks: :func:`plan_grid`, cuts at equal points, policies
    from :func:`choose_policies` (a pure function of the experiment; nothing communicates)."""
    return ParallelLayout.build(
        exp.decomposition, exp.cells, world_size, choose_policies(exp, world_size), _cell_weights(exp),
        grid=plan_grid(exp, world_size),
    )
