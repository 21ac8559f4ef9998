"""P1 conditioned on omega on 2 ranks equals 1 rank (float64): step-0 gradients, losses,
parameters after the steps, and the test error; the ranks cut x only (omega is never cut)."""

from __future__ import annotations

import json

import pytest

from .harness import launch, mpiexec
from .test_equivalence import STEPS, assert_equivalent, results

pytestmark = pytest.mark.distributed

CONDITIONED = {
    "problem": {"name": "cos1d", "conditioned": {"omega": [5.0, 15.0]}},
    "decomposition": {"levels": [{"subdomains": [1]}, {"subdomains": [8]}]},
    "network": {"hidden": [8, 8]},
    "sampling": {"method": "grid", "n": [64, 5], "test_n": [40, 3]},
    "optimizer": {"lr": 1e-3},
    "train": {"steps": STEPS, "log_every": 1, "eval_every": STEPS, "compile": "off"},
    "run": {"dtype": "float64", "plots": False, "seed": 3},
    "parallel": {"level_policy": ["replicated", "partitioned"], "timeout_s": 60, "comm": "mpi"},
}


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_two_ranks_equal_one_rank_with_a_conditioned_input(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, "equivalence", CONDITIONED, one)
    launch(2, "equivalence", CONDITIONED, two, launcher="mpiexec")
    assert_equivalent(results(one), results(two), 1e-10)
    layout = json.loads((two / "run" / "summary.json").read_text())["layout"]
    assert "2x1" in json.dumps(layout), layout  # x cut in two, omega uncut
