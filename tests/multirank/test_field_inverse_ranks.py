"""Field inversion on 2 ranks (mpiexec) equals 1 rank: the step-0 gradients of every subdomain's
networks (both outputs, u and k), the losses at every step, the parameters after the run and the
per-output test errors (float64). Each rank holds the observations inside its block
(:meth:`~ddpinn.build.Experiment.observations`); the data term's mean is over all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.session import make_layout

from .harness import launch, mpiexec, rel_diff
from .test_equivalence import assert_equivalent, results

pytestmark = pytest.mark.distributed

CONFIG = {
    "problem": {"name": "darcy_inverse", "params": {"n_observations": 80, "data_weight": 100.0}},
    "decomposition": {"levels": 3},
    "network": {"hidden": [8], "output_scale": [1.0, 0.5], "output_levels": {"u": [1, 2]}},  # u off the partitioned L3
    "optimizer": {"lr": 1e-3},
    "sampling": {"method": "grid", "n": [20, 20], "test_n": [21, 21]},
    "train": {"steps": 5, "log_every": 1, "eval_every": 5, "compile": "off"},
    "run": {"dtype": "float64", "plots": False, "seed": 3},
    "parallel": {"level_policy": ["replicated", "partitioned", "partitioned"], "comm": "mpi", "timeout_s": 60},
}


@pytest.mark.skipif(mpiexec() is None, reason="needs mpiexec")
def test_two_ranks_invert_the_same_field_as_one(tmp_path):
    launch(1, "equivalence", CONFIG, tmp_path / "one")
    launch(2, "equivalence", CONFIG, tmp_path / "two", launcher="mpiexec")
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    assert_equivalent(one, two, 1e-10)
    assert json.loads((tmp_path / "two" / "run" / "summary.json").read_text())["world_size"] == 2
    # each rank holds the observations in its block, and both hold some: the data is split
    exp = build_experiment(load_config(data={**CONFIG, "run": {**CONFIG["run"], "output_dir": str(tmp_path)}}))
    layout = make_layout(exp, 2)
    held = [exp.observations(layout.block(rank))["data"].shape[0] for rank in range(2)]
    assert min(held) > 0 and sum(held) == 80
    (_, _, metrics_one), (_, _, metrics_two) = one, two
    for field in ("rel_l2_u", "rel_l2_k"):
        assert rel_diff(metrics_one[-1][field], metrics_two[-1][field]) <= 1e-10, field
    # the data term is on both ranks' observations: its value at step 1 equals one rank's
    np.testing.assert_allclose(metrics_two[0]["terms"]["data"], metrics_one[0]["terms"]["data"], rtol=1e-10)
