"""The halo exchange is a linear map whose backward is its adjoint: <A x, y> = <x, Aᵀ y>."""

from __future__ import annotations

import json

import pytest

from .harness import launch
from .test_equivalence import config

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("case,n", [("poisson2d", 2), ("poisson2d", 4), ("harmonic1d", 4)])
def test_exchange_adjoint(tmp_path, case, n):
    launch(n, "adjoint", config(case, "float64"), tmp_path)
    result = json.loads((tmp_path / "adjoint.json").read_text())
    assert result["halo_rows"] > 0, "the test needs halo points to exchange"
    scale = abs(result["ax_y"]) + abs(result["x_aty"])
    assert abs(result["ax_y"] - result["x_aty"]) <= 1e-12 * scale
    assert result["grad_err"] <= 1e-13, "autograd through the exchange differs from the written adjoint"
