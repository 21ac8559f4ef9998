"""N ranks write the same results.h5 and test errors as one rank, streaming the test grid to rank 0
chunk by chunk: every rank runs the same number of chunks (ranks with fewer run empty ones), the
pieces are gathered to rank 0 only, and nobody allgathers them."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from .harness import launch, mpiexec

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("results_worker.py")

CASES = {
    # 2-D Poisson, levels 1, 2x2, 4x4, on an odd test grid: blocks of 11 or 12 rows and 8 or 9
    # (4 ranks) or 17 columns, so ranks own different numbers of chunks of test_chunk = 17 points.
    "poisson2d": {
        "problem": {"name": "poisson2d", "params": {"frequencies": [2.0, 4.0]}},
        "decomposition": {"levels": 3},
        "sampling": {"method": "uniform", "n": 300, "test_n": [23, 17], "test_chunk": 17},
        "parallel": {"level_policy": ["replicated", "partitioned", "partitioned"]},
    },
    # 2-D Burgers (x, t), uneven explicit cuts, a reference solution as the exact one.
    "burgers": {
        "problem": {"name": "burgers"},
        "decomposition": {"levels": [{"subdomains": [1, 1]}, {"centres": [[-1.0, -0.4, 0.3, 1.0], [0.0, 0.5, 1.0]]}]},
        "sampling": {"method": "sobol", "n": 256, "test_n": [21, 11], "test_chunk": 9},
        "parallel": {"level_policy": ["replicated", "partitioned"]},
    },
}


def config(case: str) -> dict:
    data = json.loads(json.dumps(CASES[case]))
    data.update(
        optimizer={"lr": 1e-3},
        train={"steps": 3, "log_every": 3, "eval_every": 3, "compile": "off"},
        run={"dtype": "float64", "plots": False, "seed": 3},
        parallel={**data["parallel"], "timeout_s": 60},
    )
    return data


def read(out: Path) -> dict:
    with h5py.File(out / "run" / "results.h5") as f:
        arrays = {k: f[k][()] for k in f}
        attrs = dict(f.attrs)
    summary = json.loads((out / "run" / "summary.json").read_text())
    return {"arrays": arrays, "attrs": attrs, "errors": summary["errors"]}


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    cache = {}

    def get(case: str) -> dict:
        if case not in cache:
            out = tmp_path_factory.mktemp(f"one-{case}")
            launch(1, "train", config(case), out, worker=WORKER)
            cache[case] = read(out)
        return cache[case]

    return get


@pytest.mark.parametrize("case,n,launcher,comm", [
    ("poisson2d", 2, "torchrun", "torch"),
    ("poisson2d", 4, "mpiexec", "mpi"),
    ("burgers", 4, "torchrun", "torch"),
])
def test_n_ranks_stream_the_same_results_to_rank_0(tmp_path, one_rank, case, n, launcher, comm):
    if launcher == "mpiexec" and mpiexec() is None:
        pytest.skip("mpiexec not installed (pip install mpich mpi4py)")
    cfg = config(case)
    cfg["parallel"]["comm"] = comm
    launch(n, "train", cfg, tmp_path, launcher=launcher, worker=WORKER)
    ref, got = one_rank(case), read(tmp_path)

    assert set(got["arrays"]) == set(ref["arrays"]) == {"x", "prediction", "exact", "error"}
    np.testing.assert_array_equal(got["arrays"]["x"], ref["arrays"]["x"])  # grid order
    np.testing.assert_array_equal(got["arrays"]["exact"], ref["arrays"]["exact"])
    for key in ("prediction", "error"):
        np.testing.assert_allclose(got["arrays"][key], ref["arrays"][key], rtol=0, atol=1e-12, err_msg=key)
    assert got["attrs"].keys() == ref["attrs"].keys()
    for key, value in ref["errors"].items():
        assert got["errors"][key] == pytest.approx(value, rel=1e-10), key
        assert got["attrs"][key] == got["errors"][key]

    calls = [json.loads((tmp_path / f"calls_rank{r}.json").read_text()) for r in range(n)]
    rounds = max(c["own_chunks"] for c in calls)
    assert len({c["own_chunks"] for c in calls}) > 1, "the case should give ranks different chunk counts"
    for rank, c in enumerate(calls):
        assert c["allgather_object"] == 0, f"rank {rank} allgathered in the final write"
        assert c["gather_object"] == rounds, f"rank {rank} ran {c['gather_object']} chunks, not {rounds}"
        assert c["gathers_received"] == (rounds if rank == 0 else 0), f"rank {rank} received pieces"
