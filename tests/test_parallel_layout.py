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


# ---------------------------------------------------------------------------- subdomain schedules
SWEEP = {"kind": "sweep", "axis": "t", "width": 0.25}


def _burgers(schedule=None, partition_axes="auto", subdomains=(4, 4)):
    extra = {"schedule": schedule} if schedule else {}
    return experiment(levels=[{"subdomains": list(subdomains)}], n=(32, 32), problem="burgers",
                      parallel={"partition_axes": partition_axes}, train={"steps": 400}, **extra)


@pytest.mark.parametrize("world", [2, 4])
def test_a_time_sweep_leaves_time_uncut(world):
    """Blocks later in time would wait idle for the band: the grid cuts x only. Without the
    schedule the same run cuts t at 4 ranks (so the test would see a time cut)."""
    from ddpinn.parallel.policy import partition_axes

    exp = _burgers(SWEEP)
    assert partition_axes(exp, world) == [0]
    assert plan_layout(exp, world).grid == (world, 1)
    assert plan_layout(_burgers(), 4).grid == (2, 2)


def test_coarse_to_fine_sweeps_no_axis_and_the_grid_is_the_plain_one():
    from ddpinn.parallel.policy import swept_axes

    exp = experiment(levels=3, schedule={"kind": "coarse_to_fine", "starts": [0, 100, 200]}, train={"steps": 400})
    assert swept_axes(exp.schedule, exp.decomposition) == []
    assert plan_layout(exp, 4).grid == (2, 2)


def test_partition_axes_overrides_and_its_errors():
    from ddpinn.config import ConfigError

    assert plan_layout(_burgers(SWEEP, partition_axes=["t"]), 4).grid == (1, 4)  # as asked, though swept
    with pytest.raises(ConfigError, match=r"parallel.partition_axes: 'y' is not an input of the problem"):
        plan_layout(_burgers(partition_axes=["y"]), 2)
    exp = _burgers(partition_axes=["t"])
    with pytest.raises(ConfigError, match=r"parallel.partition_axes: 64 ranks cannot be laid out cutting only \['t'\]"):
        plan_layout(exp, 64)
    with pytest.raises(ConfigError, match="parallel.partition_axes: 'auto' or a non-empty list"):
        _burgers(partition_axes=[])


def test_a_sweep_falls_back_to_every_axis_when_the_others_have_too_few_cells():
    exp = _burgers(SWEEP, subdomains=(1, 8))  # one subdomain across x: few cells there
    cells_x = exp.cells[0]
    layout = plan_layout(exp, 2 * cells_x)
    assert layout.grid[1] > 1 and int(np.prod(layout.grid)) == 2 * cells_x


def test_halo_cost_of_a_level_counts_only_its_active_steps():
    plain = level_costs(experiment(levels=3, train={"steps": 400}), 2)
    late = level_costs(experiment(levels=3, train={"steps": 400},
                                  schedule={"kind": "coarse_to_fine", "starts": [0, 0, 300]}), 2)
    assert late[2].extra_halo_floats == pytest.approx(plain[2].extra_halo_floats / 4)  # active 100 of 400 steps
    assert late[1].extra_halo_floats == pytest.approx(plain[1].extra_halo_floats)
    assert late[2].allreduce_floats == plain[2].allreduce_floats
