"""The partition is a pure function of decomposition, sampling and world size (no process group)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import small_experiment as experiment

from ddpinn.parallel.layout import LayoutError, LevelPolicy, ParallelLayout, process_grid
from ddpinn.parallel.policy import choose_policies, level_costs, plan_layout


@pytest.mark.parametrize(
    "world,cells,expected",
    [(1, (7, 7), (1, 1)), (2, (15, 15), (2, 1)), (4, (15, 15), (2, 2)), (8, (15, 15), (4, 2)), (6, (29,), (6,))],
)
def test_process_grid(world, cells, expected):
    grid = process_grid(world, cells)
    assert int(np.prod(grid)) == world
    assert sorted(grid, reverse=True) == sorted(expected, reverse=True)


def test_process_grid_rejects_more_ranks_than_cells():
    with pytest.raises(LayoutError, match="does not fit the cell grid"):
        process_grid(5, (2, 2))


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_blocks_tile_the_domain_and_own_every_point_once(world):
    exp = experiment(levels=4)
    layout = plan_layout(exp, world)
    x = exp.training_points(0)["pde"]
    owners = layout.rank_of_points(x)
    counts = np.zeros(x.shape[0], dtype=int)
    for rank in range(world):
        inside = layout.block(rank).contains(x)
        counts += inside
        assert np.all(owners[inside] == rank)
    assert np.all(counts == 1)


@pytest.mark.parametrize("method", ["grid", "uniform", "sobol", "halton"])
@pytest.mark.parametrize("world", [2, 4])
def test_global_point_set_does_not_depend_on_rank_count(method, world):
    exp = experiment(levels=4, method=method)
    layout = plan_layout(exp, world)
    whole = exp.training_points(0)["pde"]
    parts = np.concatenate([exp.training_points(0, layout.block(r))["pde"] for r in range(world)])
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(whole), key(parts))


def test_partitioned_subdomains_have_exactly_one_owner():
    exp = experiment(levels=4, policy=["replicated", "replicated", "partitioned", "partitioned"])
    layout = plan_layout(exp, 4)
    for level in (2, 3):
        held = np.concatenate([layout.held(r)[level] for r in range(4)])
        assert np.array_equal(np.sort(held), np.arange(exp.decomposition.levels[level].n_subdomains))
    for level in (0, 1):
        assert all(np.array_equal(layout.held(r)[level], np.arange(exp.decomposition.levels[level].n_subdomains))
                   for r in range(4))


def test_neighbours_are_symmetric_and_local():
    exp = experiment(levels=5, n=(80, 80), policy=["replicated"] * 3 + ["partitioned"] * 2)
    layout = plan_layout(exp, 16)
    for r in range(16):
        for q in layout.neighbours(r):
            assert r in layout.neighbours(q)
        # On a 4x4 process grid a rank talks to at most its 8 surrounding blocks.
        assert len(layout.neighbours(r)) <= 8
        assert r not in layout.neighbours(r)


def test_cost_model_partitions_fine_levels_and_replicates_coarse_ones():
    exp = experiment(levels=5, n=(80, 80))
    policies = choose_policies(exp, 2)
    assert policies[0] == LevelPolicy.REPLICATED  # one subdomain < 2 ranks
    assert policies[-1] == LevelPolicy.PARTITIONED  # 256 networks: all-reduce dearer than its halo
    # Once a level is replicated, every coarser one is too.
    first_partitioned = policies.index(LevelPolicy.PARTITIONED)
    assert all(p == LevelPolicy.PARTITIONED for p in policies[first_partitioned:])
    costs = level_costs(exp, 2)
    assert costs[-1].extra_halo_floats < costs[-1].allreduce_floats


def test_levels_with_fewer_subdomains_than_ranks_are_replicated():
    exp = experiment(levels=4, policy="partitioned")
    policies = choose_policies(exp, 8)
    assert policies == [LevelPolicy.REPLICATED, LevelPolicy.REPLICATED, LevelPolicy.PARTITIONED, LevelPolicy.PARTITIONED]


def test_explicit_partitioned_level_with_too_few_subdomains_is_an_error():
    exp = experiment(levels=4)
    policies = [LevelPolicy.REPLICATED, LevelPolicy.PARTITIONED, LevelPolicy.PARTITIONED, LevelPolicy.PARTITIONED]
    with pytest.raises(LayoutError, match="level 2 has 4 subdomains < 8 ranks"):
        ParallelLayout.build(exp.decomposition, exp.cells, 8, policies)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_point_balanced_cuts_are_within_one_cell_slab(world):
    exp = experiment(levels=4, n=(41, 41))  # 7x7 cells of about 6 grid lines each
    layout = plan_layout(exp, world)
    counts = np.bincount(layout.rank_of_points(exp.training_points(0)["pde"]), minlength=world)
    slab = 6 * 41 * max(layout.grid)  # one cell's worth of grid lines across a block
    assert counts.max() - counts.min() <= slab
