"""``ddpinn.load`` on one process reads a checkpoint written by 2 ranks: the loaded model predicts
what the 2-rank run wrote to results.h5 and what the same run trained on 1 rank predicts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import ddpinn
from ddpinn.train.checkpoint import load_checkpoint

from .harness import mpiexec, scaled
from .test_equivalence import config

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]


def train(tmp_path: Path, name: str, ranks: int) -> Path:
    """Train the 3-level P4 case (level 1 replicated, levels 2 and 3 partitioned) in float64."""
    cfg = config("poisson2d", "float64")
    cfg["run"].update(output_dir=str(tmp_path), name=name)
    cfg["train"].update(steps=20, eval_every=20)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launch = [mpiexec(), "-n", str(ranks)] if ranks > 1 else []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    proc = subprocess.run([*launch, sys.executable, "-m", "ddpinn.cli", "train", str(path), "--quiet"], cwd=ROOT, check=False,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=scaled(240))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp_path / name


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_a_two_rank_checkpoint_loads_and_predicts_on_one_process(tmp_path):
    two, one = train(tmp_path, "two", 2), train(tmp_path, "one", 1)
    assert load_checkpoint(two / "checkpoint.h5").world_size == 2
    model = ddpinn.load(two)
    with h5py.File(two / "results.h5", "r") as f:
        x = f["x"][()].reshape(-1, 2)
        written = f["prediction"][()].reshape(-1, 1)
    got = model.predict(x)
    np.testing.assert_allclose(got, written, rtol=0, atol=1e-12 * np.abs(written).max())
    # The same run on one rank: equal to float64 round-off (the N-rank == 1-rank invariant).
    np.testing.assert_allclose(got, ddpinn.load(one).predict(x), rtol=0, atol=1e-9 * np.abs(written).max())
    d_two = model.predict(x[::37], derivatives=["u_xx", "u_xy"])
    d_one = ddpinn.load(one).predict(x[::37], derivatives=["u_xx", "u_xy"])
    for name in d_two:
        np.testing.assert_allclose(d_two[name], d_one[name], rtol=0, atol=1e-9 * np.abs(d_one[name]).max())
