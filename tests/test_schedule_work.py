"""Per-rank work under a subdomain schedule, counted from the roles (ddpinn.parallel.phase_work),
equals the real batches' counts at every phase (1-D and 2-D, replicated and partitioned levels);
``ddpinn check`` prints the schedule and per-rank work at its first and last phases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import small_experiment, write_yaml

from ddpinn.cli import main
from ddpinn.model.batch import build_batch
from ddpinn.parallel.exchange.plan import halo_requests
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.phase_work import PhaseCounter, phase_workload
from ddpinn.parallel.policy import plan_layout
from ddpinn.parallel.workload import workload
from ddpinn.schedule import Role
from ddpinn.train.scheduled import kept_points

STEPS = {"steps": 400}
# (name, problem, levels, grid points, ranks, level policy, schedule)
CASES = [
    ("1-D sweep, 2 levels, 3 ranks partitioned", "cos1d", [{"subdomains": 5}, {"subdomains": 11}], (120,), 3,
     "partitioned", {"kind": "sweep", "axis": "x", "width": 3.0, "stride": 1.5}),
    ("Burgers time sweep, 1 rank", "burgers", [{"subdomains": [3, 4]}], (30, 30), 1, "auto",
     {"kind": "sweep", "axis": "t", "width": 0.25}),
    ("Burgers time sweep, 2 ranks", "burgers", [{"subdomains": [3, 4]}], (30, 30), 2, "auto",
     {"kind": "sweep", "axis": "t", "width": 0.25}),
    ("P4 L3 sweep of levels 2-3 along y, 4 ranks partitioned", "poisson2d", 3, (28, 26), 4, "partitioned",
     {"kind": "sweep", "axis": "y", "width": 0.3, "stride": 0.2, "levels": [2, 3]}),
    ("P4 L4 coarse to fine, coarser fixed, 2 ranks mixed", "poisson2d", 4, (30, 30), 2,
     ["replicated", "replicated", "partitioned", "partitioned"],
     {"kind": "coarse_to_fine", "starts": [0, 100, 200, 300], "fix_coarser": True}),
]
IDS = [c[0] for c in CASES]


def _experiment(problem, levels, n, policy, schedule):
    return small_experiment(levels, "grid", n, policy, problem, schedule=schedule, train=STEPS)


def _layout(exp, ranks):
    return ParallelLayout.single(exp.decomposition, exp.cells) if ranks == 1 else plan_layout(exp, ranks)


def measured(exp, layout, rank, roles):
    """The rank's real counts in a phase: kept own points, halo points from the exchange plan's
    requests on the other ranks' kept points, and the active and fixed pairs per level of the
    batch built with the phase's evaluated subdomains (as the trainer's phase batch does)."""

    def kept(r):
        groups = exp.training_points(0, layout.block(r))
        return {name: x[kept_points(exp.decomposition, roles, x)] for name, x in groups.items()}

    groups = kept(rank)
    halo = []
    for q in layout.neighbours(rank):
        x_q = np.concatenate(list(kept(q).values()))
        rows = halo_requests(layout, q, x_q).get(rank)
        if rows is not None:
            halo.append(x_q[rows])
    halo = np.concatenate(halo) if halo else np.zeros((0, exp.problem.dim))
    batch = build_batch(
        exp.problem, exp.decomposition, exp.window, exp.spec, groups, held=layout.held(rank), halo=halo,
        halo_levels=[layout.is_partitioned(l) for l in range(exp.decomposition.n_levels)], dtype=torch.float64,
        present=[r != Role.OFF for r in roles],
    )
    pairs = {Role.ACTIVE: {}, Role.FIXED: {}}
    for l, cov in enumerate(batch.levels):
        per_row = (cov.point_index != cov.n_points).sum(1).numpy()
        row_roles = roles[l][cov.subdomain_ids.numpy()]
        for role in pairs:
            pairs[role][l] = int(per_row[row_roles == role].sum())
    return {"kept": sum(len(x) for x in groups.values()), "halo": halo.shape[0],
            "active": pairs[Role.ACTIVE], "fixed": pairs[Role.FIXED]}


@pytest.mark.parametrize("name, problem, levels, n, ranks, policy, schedule", CASES, ids=IDS)
def test_phase_counts_equal_the_real_batch_at_every_phase(name, problem, levels, n, ranks, policy, schedule):
    exp = _experiment(problem, levels, n, policy, schedule)
    layout = _layout(exp, ranks)
    counter = PhaseCounter(exp, layout)
    phases = exp.schedule.phases()
    assert len(phases) >= 2
    all_active = workload(exp, layout).total_pairs
    fewer = False
    for start, end in phases:
        roles = exp.schedule.roles_at(start)
        work = counter.work(roles, start, end)
        assert work.exact and (work.start, work.end) == (start, end)
        for rank in range(ranks):
            real, counted = measured(exp, layout, rank, roles), work.ranks[rank]
            assert counted.kept_points == real["kept"], (start, rank)
            assert counted.active_pairs_by_level == real["active"], (start, rank)
            assert counted.fixed_pairs_by_level == real["fixed"], (start, rank)
            assert counted.halo_points == real["halo"], (start, rank)
        fewer |= sum(r.active_pairs for r in work.ranks) < all_active
    assert fewer  # some phase trains fewer pairs than all-active (not the plain counts throughout)


@pytest.mark.parametrize("derivatives", ["jets", "fd"])
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_all_active_roles_give_the_plain_workload(ranks, derivatives):
    """(With fd both count stencil points: tests/test_workload.py checks those against real batches.)"""
    exp = small_experiment(4, "grid", (36, 30), "auto", "poisson2d", model={"derivatives": derivatives})
    layout = _layout(exp, ranks)
    plain = workload(exp, layout)
    roles = [np.full(level.n_subdomains, Role.ACTIVE, dtype=np.int8) for level in exp.decomposition.levels]
    phase = phase_workload(exp, layout, roles)
    assert [r.active_pairs_by_level for r in phase.ranks] == [r.pairs_by_level for r in plain.ranks]
    assert [r.kept_points for r in phase.ranks] == [r.n_own for r in plain.ranks]
    assert [r.halo_points for r in phase.ranks] == [r.halo_points for r in plain.ranks]
    assert all(p == 0 for r in phase.ranks for p in r.fixed_pairs_by_level.values())


def test_check_prints_the_schedule_and_per_rank_work_at_start_and_end(tmp_path, capsys):
    config = write_yaml(tmp_path / "sweep.yaml", {
        "problem": {"name": "burgers"},
        "decomposition": {"levels": [{"subdomains": [3, 4]}]},
        "sampling": {"method": "grid", "n": [30, 30]},
        "schedule": {"kind": "sweep", "axis": "t", "width": 0.25},
        "train": STEPS,
    })
    assert main(["check", str(config), "--ranks", "2"]) == 0
    out = capsys.readouterr().out
    exp = _experiment("burgers", [{"subdomains": [3, 4]}], (30, 30), "auto", {"kind": "sweep", "axis": "t", "width": 0.25})
    counter = PhaseCounter(exp, plan_layout(exp, 2))
    first, last = exp.schedule.phases()[0], exp.schedule.phases()[-1]
    assert "layout        2 rank(s) on a 2x1 process grid" in out  # x cut, t not
    assert f"schedule      {exp.schedule.describe()}" in out
    assert f"transitions at steps {', '.join(map(str, exp.schedule.transitions()))};" in out
    for (start, end), label in ((first, "first"), (last, "last")):
        work = counter.work(exp.schedule.roles_at(start), start, end)
        kept = sorted({r.kept_points for r in work.ranks})
        pairs = sorted({r.active_pairs for r in work.ranks})
        header = next(line for line in out.splitlines() if line.startswith(f"  steps {start}-{end - 1} ("))
        assert label in header
        block = out.split(header, 1)[1]
        assert f"kept points {'-'.join(map(str, kept))}; active pairs L1 {'-'.join(map(str, pairs))}" in block
    assert "fixed pairs (evaluated once per phase) L1 0\n" in out  # nothing fixed before the band moves


def test_the_progress_line_and_metrics_show_the_active_pairs_of_the_phase(tmp_path, capsys):
    from ddpinn.config import load_config
    from ddpinn.io.outputs import read_metrics
    from ddpinn.session import run_training

    data = {
        "problem": {"name": "burgers"},
        "decomposition": {"levels": [{"subdomains": [3, 4]}]},
        "network": {"hidden": [8]},
        "sampling": {"method": "grid", "n": [20, 20], "test_n": [16, 9]},
        "schedule": {"kind": "sweep", "axis": "t", "width": 0.25},
        "train": {"steps": 8, "log_every": 2, "eval_every": 8, "compile": "off"},
        "run": {"output_dir": str(tmp_path), "name": "sweep"},
    }
    cfg = load_config(data=data)
    run_training(cfg)
    out = capsys.readouterr().out
    exp = small_experiment([{"subdomains": [3, 4]}], "grid", (20, 20), "auto", "burgers",
                           schedule=data["schedule"], train={"steps": 8})
    counter = PhaseCounter(exp, _layout(exp, 1))
    records = read_metrics(cfg.run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    seen = set()
    for record in records:
        step = record["step"] - 1  # the step the logged batch trained
        expected = counter.work(exp.schedule.roles_at(step)).ranks[0].active_pairs
        assert record["active_pairs_per_rank"] == [expected]
        line = next(line for line in out.splitlines() if line.startswith(f"[step {record['step']}/8]"))
        assert line.endswith(f"| {expected} active pairs")
        seen.add(expected)
    assert len(seen) > 1  # the count follows the phases
