"""The set-up benchmark (benchmarks/setup_scaling.py) in a tiny mode: it times ``ddpinn check``
and a per-rank set-up under mpiexec, and predicts each rank from its share of the pairs. Eight
fresh processes (40 s on an idle 2-core machine, minutes under load): marked slow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not MPIEXEC.exists() and shutil.which("mpiexec") is None, reason="needs mpiexec")
def test_tiny_run_writes_check_and_setup_rows(tmp_path):
    out = tmp_path / "setup.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "setup_scaling.py"), "--check-levels", "3", "--check-ranks", "1", "2",
           "--setup-levels", "3", "--setup-ranks", "2", "--setup-points", "24", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    checks = [r for r in rows if r["kind"] == "check"]
    setups = [r for r in rows if r["kind"] == "setup"]
    assert [(r["levels"], r["ranks"]) for r in checks] == [(3, 1), (3, 2)]
    # P4 L = 3 on a 40² grid (n = 40·2^(L-4) = 20 per axis): level 1 pairs every point once.
    assert all(r["points"] == 20 * 20 and r["total_pairs"] > 3 * 400 for r in checks)
    assert all(r["setup_s"] > 0 and r["peak_mb"] > 0 for r in checks)
    assert [(r["levels"], r["ranks"]) for r in setups] == [(3, 1), (3, 2)]
    one, two = setups
    assert one["total_pairs"] == two["total_pairs"]  # the ranks evaluate every pair once between them
    for row in setups:
        for rank in row["per_rank"]:
            share = rank["pairs"] / row["total_pairs"]
            assert rank["predicted_mb"] == pytest.approx(share * row["one_process_mb"] + row["constant_mb"])
            assert rank["predicted_s"] == pytest.approx(share * row["one_process_s"] + row["constant_s"])
    assert len(two["per_rank"]) == 2 and sum(r["pairs"] for r in two["per_rank"]) == one["per_rank"][0]["pairs"]
    assert "| L | points | ranks | CPU s |" in done.stdout
