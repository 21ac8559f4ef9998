"""8 and 16 ranks: the layouts that 2 and 4 ranks never reach.

8 ranks cut a 2-D domain into a 4x2 process grid, so interior blocks have neighbours on both
axes and across corners, and two partitioned levels overlap in their halos. 16 ranks at L = 8
(21,845 subdomains, 4x4 blocks) is the smoke test of a deep hierarchy: a few steps, the same
gradients, losses and parameters as one rank. Both run under mpiexec (the MPI communicator), several ranks per core.
"""

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

STEPS = 3

# 2-D Poisson on levels 1, 2x2, 4x4, 8x8: levels 3 and 4 partitioned over 4x2 blocks.
EIGHT_RANKS = {
    "problem": {"name": "poisson2d", "params": {"frequencies": [2.0, 4.0, 8.0]}},
    "decomposition": {"levels": 4},
    "network": {"hidden": [8]},
    "sampling": {"method": "uniform", "n": 600, "test_n": [24, 24]},
    "parallel": {"level_policy": ["replicated", "replicated", "partitioned", "partitioned"], "timeout_s": 120},
    "optimizer": {"lr": 1e-3},
    "train": {"steps": STEPS, "log_every": 1, "eval_every": STEPS, "compile": "off"},
    "run": {"dtype": "float64", "plots": False, "seed": 5},
}

# P4 at L = 8 with a light point set (about 4 points per finest subdomain and axis).
SIXTEEN_RANKS = {
    "problem": {"name": "poisson2d", "params": {"frequencies": [2, 4, 8, 16, 32, 64, 128]}},
    "decomposition": {"levels": 8, "overlap": 1.9},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [256, 256], "test_n": [64, 64]},
    "parallel": {"timeout_s": 300},
    "optimizer": {"lr": 1e-3},
    "train": {"steps": STEPS, "log_every": 1, "eval_every": STEPS, "compile": "off"},
    "run": {"dtype": "float64", "plots": False, "seed": 1},
}


def _layout(data: dict, ranks: int):
    return make_layout(build_experiment(load_config(data=json.loads(json.dumps(data)))), ranks)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]


def test_eight_rank_layout_is_a_4x2_grid_with_corner_neighbours():
    layout = _layout(EIGHT_RANKS, 8)
    assert sorted(layout.grid) == [2, 4]
    assert [layout.is_partitioned(l) for l in range(4)] == [False, False, True, True]
    # An interior block of a 4x2 grid touches the 5 others around it, corners included.
    counts = [len(layout.neighbours(r)) for r in range(8)]
    assert max(counts) == 5 and min(counts) == 3


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_eight_ranks_equal_one_rank(tmp_path):
    ref, got = tmp_path / "one", tmp_path / "eight"
    launch(1, "equivalence", EIGHT_RANKS, ref)
    cfg = json.loads(json.dumps(EIGHT_RANKS))
    cfg["parallel"]["comm"] = "mpi"
    launch(8, "equivalence", cfg, got, launcher="mpiexec", timeout=scaled(600))
    assert_equivalent(results(ref), results(got), 1e-10)


def test_sixteen_rank_layout_partitions_the_fine_levels():
    layout = _layout(SIXTEEN_RANKS, 16)
    assert layout.grid == (4, 4)
    assert layout.is_partitioned(7) and not layout.is_partitioned(0)
    owned = np.bincount(layout.owners[7], minlength=16)
    assert owned.min() == owned.max() == 128 * 128 // 16


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_sixteen_ranks_at_eight_levels_match_one_rank(tmp_path):
    """A few steps of P4 L = 8 on 16 ranks: the same step-0 gradients of all 21,845 networks, the
    same losses and the same parameters as one rank (float64)."""
    ref, got = tmp_path / "one", tmp_path / "sixteen"
    launch(1, "equivalence", SIXTEEN_RANKS, ref, timeout=scaled(600))
    cfg = json.loads(json.dumps(SIXTEEN_RANKS))
    cfg["parallel"]["comm"] = "mpi"
    launch(16, "equivalence", cfg, got, launcher="mpiexec", timeout=scaled(900))
    summary = json.loads((got / "run" / "summary.json").read_text())
    assert summary["world_size"] == 16
    assert np.isfinite([r["loss"] for r in _metrics(got)]).all()
    assert_equivalent(results(ref), results(got), 1e-9)
