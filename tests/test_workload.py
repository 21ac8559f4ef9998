"""The workload (per-rank own points, pairs per level, halo points, parameters) counted per axis
equals the counts of the real points and batches, which it never builds (with finite differences,
within a tolerance: the stencil points near the faces); the layout's neighbour sets equal those
of the per-subdomain algorithm they replaced."""

from __future__ import annotations

import itertools
import textwrap

import numpy as np
import pytest
import torch
from helpers import small_experiment

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.model.batch import build_batch
from ddpinn.parallel.analysis import rank_traffic
from ddpinn.parallel.exchange.plan import halo_requests
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.memory import batch_counts
from ddpinn.parallel.policy import plan_layout
from ddpinn.parallel.workload import EvaluatedRows, Intervals, PointCounter, workload

FACES_AND_DATA = textwrap.dedent(
    """
    import torch
    from dataclasses import dataclass
    from ddpinn.geometry import Box
    from ddpinn.jets import D
    from ddpinn.problems import Constraint, Face, Point, Points, Problem

    @dataclass
    class Plate(Problem):
        inputs = ("x", "y")
        derivatives = (D("u", "x", "x"), D("u", "y", "y"))
        def domain(self):
            return Box((0.0, -1.0), (2.0, 1.0))
        def residual(self, x, d):
            return d["u_xx"] + d["u_yy"]
        def constraints(self):
            data = torch.rand(57, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            data = data * torch.tensor([2.0, 2.0], dtype=torch.float64) - torch.tensor([0.0, 1.0], dtype=torch.float64)
            return [
                Constraint("left", Face("x", "lo"), lambda x, d: d["u"], n_points=23),
                Constraint("top", Face("y", "hi"), lambda x, d: d["u"] - 1.0, n_points=31),
                Constraint("corner", Point((2.0, 1.0)), lambda x, d: d["u"]),
                Constraint("data", Points(data), lambda x, d: d["u"]),
            ]
    """
)

# (name, problem, decomposition levels, points, ranks, level policy)
CASES = [
    ("P4 L3, 1 rank", "poisson2d", 3, (30, 30), 1, "auto"),
    ("P4 L4, 2 ranks partitioned, uneven grid", "poisson2d", 4, (41, 37), 2, "partitioned"),
    ("P4 L4, 4 ranks replicated", "poisson2d", 4, (40, 40), 4, "replicated"),
    ("P4 L4, 4 ranks auto", "poisson2d", 4, (40, 40), 4, "auto"),
    ("P4 L4, 6 ranks partitioned", "poisson2d", 4, (43, 40), 6, "partitioned"),
    ("heat 3-D, 4 ranks", "heat2d_ms", 3, (9, 10, 11), 4, "partitioned"),
    ("cos1d, 3 ranks", "cos1d", [{"subdomains": 7}, {"subdomains": 15}], (200,), 3, "partitioned"),
    ("faces, point and data, 2 ranks", "plate", 3, (24, 21), 2, "partitioned"),
    ("faces, point and data, 4 ranks mixed", "plate", 4, (24, 21), 4, ["replicated", "replicated", "replicated", "partitioned"]),
]
IDS = [c[0] for c in CASES]


def experiment(tmp_path, problem, levels, n, method="grid", policy="auto", **extra):
    if problem == "plate":
        (tmp_path / "plate.py").write_text(FACES_AND_DATA)
        problem = f"{tmp_path / 'plate.py'}:Plate"
    return small_experiment(levels, method, n, policy, problem, **extra)


def layout_for(exp, ranks):
    return ParallelLayout.single(exp.decomposition, exp.cells) if ranks == 1 else plan_layout(exp, ranks)


def measured(exp, layout, rank):
    """The rank's real counts, as :func:`~ddpinn.parallel.exchange.plan.build_distributed_batch`
    makes them: its points, the rows it evaluates for them (their stencil points with
    ``model.derivatives: fd``), halo rows from the exchange plan's requests, the pairs of the
    batch the trainer would build from them, and that batch."""
    dim, fd = exp.problem.dim, exp.finite_difference

    def own(r):
        """(points per loss term, the stencil or None, the evaluated rows [n_rows, dim])."""
        groups = exp.training_points(0, layout.block(r))
        x = np.concatenate(list(groups.values()))
        stencil = None if fd is None else fd.stencil(x, exp.spec)
        return groups, stencil, x if stencil is None else stencil.points

    groups, stencil, _ = own(rank)
    # A stencil point can lie in a subdomain of a rank that is no neighbour of the layout.
    others = layout.neighbours(rank) if fd is None else [q for q in range(layout.world_size) if q != rank]
    halo = [
        rows_q[requested]
        for q in others
        if (requested := halo_requests(layout, q, rows_q := own(q)[2]).get(rank)) is not None
    ]
    halo = np.concatenate(halo) if halo else np.zeros((0, dim))
    batch = build_batch(
        exp.problem, exp.decomposition, exp.window, exp.spec, groups, held=layout.held(rank), halo=halo,
        halo_levels=[layout.is_partitioned(l) for l in range(exp.decomposition.n_levels)], dtype=torch.float64,
        stencil=stencil,
    )
    return {
        "own": {k: len(v) for k, v in groups.items()},
        "halo": halo.shape[0],
        "pairs": {l: cov.n_pairs for l, cov in enumerate(batch.levels)},
        "batch": batch,
    }


def within_expectation(expected, real):
    """An expected count against a real one: 4 standard deviations of a Poisson count plus 3%."""
    return abs(expected - real) <= 4 * np.sqrt(real) + 0.03 * real


@pytest.mark.parametrize("name, problem, levels, n, ranks, policy", CASES, ids=IDS)
def test_grid_counts_equal_the_real_batch(tmp_path, name, problem, levels, n, ranks, policy):
    exp = experiment(tmp_path, problem, levels, n, policy=policy)
    layout = layout_for(exp, ranks)
    work = workload(exp, layout)
    assert work.exact
    for rank in range(ranks):
        real, counted = measured(exp, layout, rank), work.ranks[rank]
        assert counted.own_points == real["own"], rank
        assert counted.halo_points == real["halo"], rank
        assert counted.pairs_by_level == real["pairs"], rank
        assert counted.subdomains_by_level == {l: ids.size for l, ids in enumerate(layout.held(rank))}
    # Every pair is evaluated once, by one rank: the totals are the one-process counts.
    one = workload(exp, layout_for(exp, 1))
    assert work.pairs_by_level == one.pairs_by_level == one.ranks[0].pairs_by_level


def test_parameters_and_halo_by_level(tmp_path):
    exp = experiment(tmp_path, "poisson2d", 4, (40, 40), policy=["replicated", "replicated", "partitioned", "partitioned"])
    layout = plan_layout(exp, 4)
    work = workload(exp, layout)
    per_network = 2 * 16 + 16 + 16 + 1
    for rank, counted in enumerate(work.ranks):
        held = [ids.size for ids in layout.held(rank)]
        assert counted.parameters == per_network * sum(held)
        assert counted.replicated_parameters == per_network * (1 + 4)
        traffic = rank_traffic(exp, layout, rank)
        # rank_traffic numbers levels from 1; its halo per level comes from the real points.
        assert {l + 1: v for l, v in counted.halo_points_by_level.items()} == traffic.halo_points_by_level
        assert counted.halo_points == traffic.halo_points == traffic.analytic_halo_points
        assert traffic.requested_points == traffic.analytic_requested_points


RANDOM = [c for c in CASES if c[0] in (
    "P4 L4, 2 ranks partitioned, uneven grid", "P4 L4, 4 ranks auto", "heat 3-D, 4 ranks",
    "faces, point and data, 4 ranks mixed",
)]


@pytest.mark.parametrize("method", ["uniform", "sobol", "lhs", "hammersley"])
@pytest.mark.parametrize("name, problem, levels, n, ranks, policy", RANDOM, ids=[c[0] for c in RANDOM])
def test_random_points_counts_are_expectations(tmp_path, method, name, problem, levels, n, ranks, policy):
    """Uniform sampling: own points exact (per-cell counts), pairs and halo points are expected
    counts (points uniform within a cell). Sobol/Halton/LHS: everything by density x volume;
    Hammersley: exact along the first axis, density along the others. Tolerance
    per count: 4 standard deviations of a Poisson count plus 3% (a point counts on up to 2^dim
    subdomains of a level, which widens the spread of pairs beyond Poisson)."""
    exp = experiment(tmp_path, problem, levels, n, method=method, policy=policy)
    layout = layout_for(exp, ranks)
    work = workload(exp, layout)
    assert not work.exact
    close = within_expectation
    for rank in range(ranks):
        real, counted = measured(exp, layout, rank), work.ranks[rank]
        if method == "uniform":
            assert counted.own_points == real["own"], rank
        else:
            assert all(close(counted.own_points[k], v) for k, v in real["own"].items()), (counted.own_points, real)
        assert close(counted.halo_points, real["halo"]), (rank, counted.halo_points, real["halo"])
        for l, pairs in real["pairs"].items():
            assert close(counted.pairs_by_level[l], pairs), (rank, l, counted.pairs_by_level[l], pairs)


FD_CASES = [  # (case of CASES, sampling method)
    ("P4 L3, 1 rank", "grid"), ("P4 L4, 2 ranks partitioned, uneven grid", "grid"),
    ("P4 L4, 2 ranks partitioned, uneven grid", "uniform"), ("heat 3-D, 4 ranks", "grid"), ("cos1d, 3 ranks", "uniform"),
]
STENCIL_POINTS = {"poisson2d": 5, "heat2d_ms": 7, "cos1d": 3}
"""An interior point's stencil: u and u ± h e_a along each differentiated axis (P4: u_xx + u_yy;
heat: u_t, u_xx, u_yy; cos1d: u_x)."""


@pytest.mark.parametrize("case, method", FD_CASES, ids=[f"{c}, {m}" for c, m in FD_CASES])
def test_finite_difference_counts_follow_the_stencil_points(tmp_path, case, method):
    """With ``model.derivatives: fd`` every own point is evaluated at its stencil points: the
    counted own rows, halo rows and pairs per level are the point counts times an interior
    point's stencil, within the random-points tolerance of the batches the ranks build (which
    take a few more points near the faces: one-sided formulas); and ``batch_counts`` reads the
    same split off a built batch: the stencil points are own rows, the halo rows are the other
    ranks' requests only (none on one rank)."""
    _, problem, levels, n, ranks, policy = next(c for c in CASES if c[0] == case)
    exp = experiment(tmp_path, problem, levels, n, method=method, policy=policy, model={"derivatives": "fd"})
    assert EvaluatedRows.of(exp).per_point == STENCIL_POINTS[problem]
    layout = layout_for(exp, ranks)
    work = workload(exp, layout)
    close = within_expectation
    for rank in range(ranks):
        real, counted = measured(exp, layout, rank), work.ranks[rank]
        batch = real["batch"]
        read = batch_counts(batch, exp.make_model(layout.held(rank)))
        assert (read.own_rows, read.halo_points) == (batch.stencil.n_points, real["halo"]), rank
        assert read.pairs_by_level == real["pairs"]
        assert counted.own_points == real["own"], rank
        assert close(counted.own_rows, read.own_rows), (rank, counted.own_rows, read.own_rows)
        assert close(counted.halo_points, real["halo"]), (rank, counted.halo_points, real["halo"])
        for l, pairs in real["pairs"].items():
            assert close(counted.pairs_by_level[l], pairs), (rank, l, counted.pairs_by_level[l], pairs)
        traffic = rank_traffic(exp, layout, rank)  # the scaling model's per-rank traffic
        assert (traffic.own_points, traffic.halo_points) == (sum(real["own"].values()), real["halo"]), rank
        assert traffic.pairs == sum(real["pairs"].values()) and traffic.values_per_point == len(exp.problem.outputs)
        assert close(traffic.analytic_halo_points, real["halo"]), (rank, traffic.analytic_halo_points, real["halo"])


@pytest.mark.parametrize("name, problem, levels, n, ranks, policy", RANDOM, ids=[c[0] for c in RANDOM])
def test_hammersley_own_points_are_exact_per_slab_along_the_first_axis(tmp_path, name, problem, levels, n, ranks, policy):
    """Hammersley points are evenly spaced along the first axis, so a loss term's points in a slab
    of blocks (one block index along the first axis) are counted exactly, on every epoch. (The
    per-rank counts are rounded shares of these, not exact.)"""
    exp = experiment(tmp_path, problem, levels, n, method="hammersley", policy=policy)
    layout = layout_for(exp, ranks)
    slabs = Intervals.blocks(layout, 0)

    def slab_only(atoms, a):
        return atoms.owned(slabs) if a == 0 else np.ones((1, atoms.lo.size))

    for epoch in (0, 1):
        counted = {name: c.reshape(-1) for name, c in PointCounter(exp, epoch).per_group(slab_only).items()}
        for column in range(layout.grid[0]):
            ranks_in = [r for r in range(ranks) if layout.block_index(r)[0] == column]
            parts = [exp.training_points(epoch, layout.block(r)) for r in ranks_in]
            for term, counts in counted.items():
                real = sum(p[term].shape[0] for p in parts)
                assert abs(counts[column] - real) < 1e-6, (epoch, column, term, counts[column], real)


def test_counts_never_draw_points_or_pair_them(monkeypatch):
    """P4 L=8 (21,845 subdomains, 640²) on 64 ranks from per-axis counts only: drawing points or
    listing pairs would fail here."""
    exp = build_experiment(load_config("configs/poisson2d_L7.yaml", [
        "decomposition.levels=8", "sampling.n=[640,640]", "problem.params.frequencies=[2,4,8,16,32,64,128]",
    ]))
    layout = plan_layout(exp, 64)

    def forbidden(*args, **kwargs):
        raise AssertionError("the workload must not draw points or list pairs")

    import ddpinn.geometry.coverage
    import ddpinn.sampling

    monkeypatch.setattr(ddpinn.sampling, "sample_box", forbidden)
    monkeypatch.setattr(ddpinn.geometry.coverage, "level_pairs", forbidden)
    work = workload(exp, layout)
    # Grid points: a level of k > 1 subdomains per axis (width 1.9 x spacing) covers each grid line
    # about 1.9 times per axis; the totals are exact and equal per level from level 2 on.
    assert len(work.ranks) == 64 and work.ranks[0].n_own + sum(r.n_own for r in work.ranks[1:]) == 640 * 640
    assert work.pairs_by_level[0] == 640 * 640
    assert len(set(list(work.pairs_by_level.values())[1:])) == 1


def _neighbour_sets_per_subdomain(layout):
    """The neighbour sets as the layout computed them before (a loop over every subdomain)."""
    sets = [set() for _ in range(layout.world_size)]
    for l, level in enumerate(layout.decomposition.levels):
        if not layout.is_partitioned(l):
            continue
        lo, hi = level.subdomain_boxes()
        ranges = []
        for a in range(level.dim):
            cuts = layout.cut_coordinates(a)
            first = np.clip(np.searchsorted(cuts, lo[:, a], side="right") - 1, 0, layout.grid[a] - 1)
            last = np.clip(np.searchsorted(cuts, hi[:, a], side="left") - 1, 0, layout.grid[a] - 1)
            ranges.append((first, last))
        for s, owner in enumerate(layout.owners[l]):
            for block in itertools.product(*[range(int(f[s]), int(t[s]) + 1) for f, t in ranges]):
                other = int(np.ravel_multi_index(block, layout.grid))
                if other != owner:
                    sets[owner].add(other)
                    sets[int(other)].add(int(owner))
    return sets


@pytest.mark.parametrize("problem, levels, n, ranks, policy", [
    ("poisson2d", 5, (80, 80), 16, "partitioned"),
    ("poisson2d", 6, (160, 160), 8, "auto"),
    ("poisson2d", 4, (40, 40), 6, "partitioned"),
    ("heat2d_ms", 3, (10, 10, 10), 4, "partitioned"),
    ("cos1d", [{"subdomains": 9}, {"subdomains": 30}], (300,), 5, "partitioned"),
])
def test_neighbour_sets_equal_the_per_subdomain_algorithm(tmp_path, problem, levels, n, ranks, policy):
    exp = experiment(tmp_path, problem, levels, n, policy=policy)
    layout = plan_layout(exp, ranks)
    assert layout.any_partitioned
    assert [set(layout.neighbours(r)) for r in range(ranks)] == _neighbour_sets_per_subdomain(layout)


@pytest.mark.parametrize("method", ["grid", "uniform"])
def test_face_points_belong_to_one_rank_each(tmp_path, method):
    """A face's points are split over the ranks like the collocation points, also along the face's
    fixed axis (the face x = 0 belongs only to the blocks that start at x = 0): one rank's points
    of every loss term are the same as the union over 2 and 4 ranks."""
    exp = experiment(tmp_path, "plate", 3, (24, 21), method=method, policy="partitioned")
    whole = exp.training_points(0)
    for ranks in (2, 4):
        layout = plan_layout(exp, ranks)
        parts = [exp.training_points(0, layout.block(r)) for r in range(ranks)]
        for name, x in whole.items():
            union = np.concatenate([p[name] for p in parts])
            np.testing.assert_array_equal(_sorted(union), _sorted(x), err_msg=f"{name} on {ranks} ranks")


def _sorted(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]
