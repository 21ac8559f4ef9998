"""Choosing each level's policy: the cost model that weighs halo traffic against all-reduce traffic.

Defines :func:`plan_layout` (the :class:`ParallelLayout` for a run and a world size) and
:func:`choose_policies`. A PARTITIONED level adds halo traffic — the points within reach of
its subdomains beyond the block, times the jet values, sent forward and back every step — while
a REPLICATED level adds its parameters to the global all-reduce (about twice their size per
rank for a ring all-reduce). Levels are considered from the finest: the halo of a coarser level
contains the finer ones', so only its extra reach costs; the first level that is cheaper
replicated ends the partitioned range. A level with fewer subdomains than ranks is replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpinn.build import Experiment
from ddpinn.parallel.layout import LevelPolicy, ParallelLayout, process_grid
from ddpinn.sampling import SamplingMethod, grid_lines, grid_shape

__all__ = ["plan_layout", "choose_policies", "LevelCost"]


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


def level_costs(exp: Experiment, world_size: int) -> list[LevelCost]:
    grid = process_grid(world_size, exp.cells)
    n_points = exp.collocation_count
    values_per_point = len(exp.spec) * len(exp.problem.outputs) * 2  # forward values + backward gradients
    costs, reach = [], np.zeros(exp.problem.dim)
    for l in reversed(range(exp.decomposition.n_levels)):
        level = exp.decomposition.levels[l]
        params = exp.level_parameters(l)
        new_reach = np.maximum(reach, np.array([w.max() / 2 for w in level.widths]))
        extra = _halo_points(exp, grid, new_reach, n_points) - _halo_points(exp, grid, reach, n_points)
        costs.append(LevelCost(l, level.n_subdomains, 2.0 * params * (world_size - 1) / world_size, extra * values_per_point))
        reach = new_reach
    return costs[::-1]


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
    return ParallelLayout.build(
        exp.decomposition, exp.cells, world_size, choose_policies(exp, world_size), _cell_weights(exp)
    )
