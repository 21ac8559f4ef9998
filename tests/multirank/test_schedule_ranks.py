"""A subdomain schedule on 2 ranks equals 1 rank (float64) through its transitions: the kept
points, the active subdomains and the fixed ones' constant sums, split over the ranks and joined
by the halo exchange, give the same step-0 gradients, losses and parameters as one rank, whether
the ranks cut space (the schedule-aware grid) or the swept time axis."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.session import make_layout

from .harness import launch, mpiexec, scaled
from .test_equivalence import assert_equivalent, results

pytestmark = pytest.mark.distributed

STEPS = 8

# 1-D wave (x, t) on the 3-level layout, levels 2 and 3 partitioned; a sweep along t moving
# every 3 steps (transitions at 3 and 6), then 2 L-BFGS steps with every subdomain active.
SWEEP_RUN = {
    "problem": {"name": "wave1d"},
    "decomposition": {"levels": 3},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [16, 16], "test_n": [12, 12]},
    "schedule": {"kind": "sweep", "axis": "t", "width": 0.5, "stride": 0.25, "every": 3, "levels": [2, 3]},
    "parallel": {"level_policy": ["replicated", "partitioned", "partitioned"], "timeout_s": 120},
    "optimizer": {"lr": 1e-2},
    "lbfgs": {"steps": 2},
    "train": {"steps": STEPS, "log_every": 1, "eval_every": STEPS, "compile": "off"},
    "run": {"dtype": "float64", "plots": False, "seed": 3},
}


# Every level partitioned and swept, the ranks cutting t: in the first phase the later-time
# rank holds no active subdomain at all (its loss has no parameter), yet it owns points that the
# earlier rank's active subdomains cover, so it must still take part in the backward exchange.
IDLE_RANK_RUN = json.loads(json.dumps(SWEEP_RUN))
IDLE_RANK_RUN["schedule"] = {"kind": "sweep", "axis": "t", "width": 0.25, "stride": 0.25, "every": 3}
IDLE_RANK_RUN["parallel"].update(level_policy="partitioned", partition_axes=["t"])
IDLE_RANK_RUN["lbfgs"] = {"steps": 0}


@pytest.mark.parametrize("axis", ["x", "t"])
def test_the_ranks_cut_the_axis_asked_for(axis):
    cfg = json.loads(json.dumps(SWEEP_RUN))
    cfg["parallel"]["partition_axes"] = [axis]
    exp = build_experiment(load_config(data=cfg))
    assert exp.schedule.transitions() == [3, 6]
    layout = make_layout(exp, 2)
    assert layout.grid == ((2, 1) if axis == "x" else (1, 2))
    if axis == "t":  # the later-time rank holds only off subdomains of level 3 in the first phase
        roles = exp.schedule.roles_at(0)[2]
        assert {int(r) for r in roles[layout.held(1)[2]]} == {0}


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed (pip install mpich mpi4py)")
@pytest.mark.parametrize("axis", ["x", "t"])
def test_two_ranks_equal_one_rank_through_sweep_transitions(tmp_path, axis):
    ref, got = tmp_path / "one", tmp_path / "two"
    launch(1, "equivalence", SWEEP_RUN, ref)
    cfg = json.loads(json.dumps(SWEEP_RUN))
    cfg["parallel"].update(comm="mpi", partition_axes=[axis])
    launch(2, "equivalence", cfg, got, launcher="mpiexec", timeout=scaled(300))
    reference, result = results(ref), results(got)
    assert len(reference[2]) == STEPS + 2
    assert np.isfinite([r["loss"] for r in result[2]]).all()
    assert_equivalent(reference, result, 1e-10)
    # the per-subdomain Adam step counts agree too (gathered by global id)
    counts = sorted(k for k in reference[1] if "/adam_t/" in k)
    assert counts
    for key in counts:
        np.testing.assert_array_equal(reference[1][key], result[1][key], err_msg=key)


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_a_rank_without_active_subdomains_still_exchanges(tmp_path):
    exp = build_experiment(load_config(data=IDLE_RANK_RUN))
    layout = make_layout(exp, 2)
    first = exp.schedule.roles_at(0)
    assert all((first[l][layout.held(1)[l]] != 2).all() for l in range(3)), "rank 1 should be idle at first"
    ref, got = tmp_path / "one", tmp_path / "two"
    launch(1, "equivalence", IDLE_RANK_RUN, ref)
    cfg = json.loads(json.dumps(IDLE_RANK_RUN))
    cfg["parallel"]["comm"] = "mpi"
    launch(2, "equivalence", cfg, got, launcher="mpiexec", timeout=scaled(300))
    reference, result = results(ref), results(got)
    assert len(reference[2]) == STEPS
    assert_equivalent(reference, result, 1e-10)
