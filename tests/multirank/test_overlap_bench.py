"""The overlap prototype (benchmarks/overlap.py) computes what the shipped forward computes: u,
its jets and every gradient, on 2 ranks through gloo. Its timings are the benchmark's business."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import scaled

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]


def test_overlapped_forward_equals_the_shipped_one(tmp_path):
    out = tmp_path / "overlap.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "benchmarks" / "overlap.py"), "configs/poisson2d_L3.yaml", "--set", "run.dtype=float64",
           "--set", "parallel.level_policy=[replicated, partitioned, partitioned]",
           "--steps", "2", "--warmup", "0", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=scaled(300), env=env)
    (row,) = json.loads(out.read_text())
    assert row["ranks"] == 2 and row["halo_pair_share"] > 0
    assert row["max_rel_diff"] < 1e-12
