"""Equation discovery on 2 ranks (mpiexec) fits the same ξ, at every fit, and reaches the same
losses as on 1 rank: each rank sums ΘᵀΘ and Θᵀu_t over its own collocation points and one
all-reduce adds them (float64; the observations are split between the ranks by block). After the
last fit ξ is learnt by gradient (its corrections are replicated parameters whose gradients are
all-reduced), and the learnt ξ agrees too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .harness import launch, mpiexec

pytestmark = pytest.mark.distributed

CONFIG = {
    "problem": {"name": "discovery", "params": {
        "reference": "burgers", "observations": [24, 12], "noise": 0.01, "library": ["u", "u_x", "u_xx"],
        "degree": 2, "warmup": 3, "every": 2, "last_fit": 5, "learn_coefficients": True, "tolerance": 0.01,
        "data_weight": 10.0}},
    "decomposition": {"levels": [{"subdomains": [1, 1]}, {"subdomains": [4, 2]}]},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [16, 8], "test_n": [12, 6]},
    "train": {"steps": 8, "log_every": 1, "eval_every": 0, "compile": "off"},
    "run": {"dtype": "float64", "plots": False},
    "parallel": {"level_policy": ["replicated", "partitioned"], "comm": "mpi"},
}


def _results(out):
    summary = json.loads((out / "run" / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, losses


@pytest.mark.skipif(mpiexec() is None, reason="needs mpiexec")
def test_two_ranks_discover_the_same_xi_as_one(tmp_path):
    launch(1, "train", CONFIG, tmp_path / "one")
    launch(2, "train", CONFIG, tmp_path / "two", launcher="mpiexec")
    (one, losses_one), (two, losses_two) = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert two["world_size"] == 2 and min(two["points_per_rank"]) > 0
    fits_one, fits_two = one["discovery"]["fits"], two["discovery"]["fits"]
    assert [f["step"] for f in fits_one] == [f["step"] for f in fits_two] == [3, 5]
    for a, b in zip(fits_one, fits_two):
        assert a["coefficients"].keys() == b["coefficients"].keys(), a["step"]
        names = sorted(a["coefficients"])
        np.testing.assert_allclose([b["coefficients"][k] for k in names], [a["coefficients"][k] for k in names],
                                   rtol=1e-9, err_msg=f"step {a['step']}")
    assert len(one["discovery"]["coefficients"]) >= 2  # a fit with several terms, not a trivial one
    learnt_one, learnt_two = one["discovery"]["coefficients"], two["discovery"]["coefficients"]
    assert learnt_one != fits_one[-1]["coefficients"] and learnt_one.keys() == learnt_two.keys()
    np.testing.assert_allclose([learnt_two[k] for k in sorted(learnt_one)], [learnt_one[k] for k in sorted(learnt_one)],
                               rtol=1e-9)
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-9)
