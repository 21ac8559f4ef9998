"""The halo exchange executes the linear map its plan defines, and its backward is that map's
transpose.

The reference is independent of the operators under test: the dense matrix A of the exchange
over all ranks, built here with numpy from the plans alone (own rows map to themselves; rank
q's ``halo_rows[r]`` are added into rank r's ``owned_rows[q]``, element by element). The
worker's forward A x, and its backward through autograd and through the exposed adjoint
operator, are compared with A x and Aᵀy.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from .harness import launch
from .test_equivalence import config

pytestmark = pytest.mark.distributed


def dense_exchange(parts: list[dict]) -> np.ndarray:
    """A: [Σ_r n_own(r), Σ_r n_eval(r)], global rows and columns in rank order."""
    n_own = [p["y"].shape[0] for p in parts]
    n_eval = [p["x"].shape[0] for p in parts]
    row0, col0 = np.cumsum([0, *n_own]), np.cumsum([0, *n_eval])
    a = np.zeros((row0[-1], col0[-1]))
    for r, part in enumerate(parts):
        a[row0[r] + np.arange(n_own[r]), col0[r] + np.arange(n_own[r])] = 1.0
        for q, owned in part["owned_rows"].items():
            halo = parts[q]["halo_rows"][r]
            assert owned.shape == halo.shape, f"rank {r} expects {owned.size} rows from rank {q}, which sends {halo.size}"
            np.add.at(a, (row0[r] + owned, col0[q] + halo), 1.0)
    return a


def stacked(parts: list[dict], key: str) -> np.ndarray:
    """Every rank's ``key`` array, rows in rank order, trailing axes flattened: [rows, 6]."""
    return np.concatenate([p[key].reshape(p[key].shape[0], -1) for p in parts])


@pytest.mark.parametrize("case,n", [("poisson2d", 2), ("poisson2d", 4), ("harmonic1d", 4)])
def test_exchange_is_the_plans_matrix_and_its_backward_the_transpose(tmp_path, case, n):
    launch(n, "adjoint", config(case, "float64"), tmp_path)
    parts = pickle.loads((tmp_path / "adjoint.pkl").read_bytes())
    a = dense_exchange(parts)
    assert a.shape[1] > a.shape[0], "the test needs halo rows to exchange"
    assert (a.sum(axis=0) == 1).all(), "every partial sum must reach exactly one owned row"
    x, y = stacked(parts, "x"), stacked(parts, "y")
    np.testing.assert_allclose(stacked(parts, "ax"), a @ x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(stacked(parts, "autograd_aty"), a.T @ y, rtol=0, atol=1e-13)
    np.testing.assert_allclose(stacked(parts, "adjoint_op_aty"), a.T @ y, rtol=0, atol=1e-13)
