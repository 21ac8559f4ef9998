"""Finite-difference derivatives on N ranks equal one rank (float64): a rank evaluates the stencil
points of its own points, some outside its block, and the halo exchange brings the neighbours'
partial sums at them, so the differenced jets, loss, gradients and parameters are one rank's."""

from __future__ import annotations

import pytest

from .harness import launch
from .test_equivalence import assert_equivalent, config, results

pytestmark = pytest.mark.distributed


def fd_config(case: str) -> dict:
    cfg = config(case, "float64")
    cfg["model"] = {"derivatives": "fd", "fd_step": 0.05}
    return cfg


@pytest.mark.parametrize("case", ["poisson2d", "harmonic1d"])
def test_two_ranks_equal_one_rank_with_finite_differences(tmp_path, case):
    """poisson2d: 2-D, hard constraint, replicated + partitioned levels; harmonic1d: second order
    in t with soft constraints at t = 0 (one-sided stencils there), four levels."""
    launch(1, "equivalence", fd_config(case), tmp_path / "one")
    launch(2, "equivalence", fd_config(case), tmp_path / "two", launcher="torchrun")
    assert_equivalent(results(tmp_path / "one"), results(tmp_path / "two"), 1e-10)
