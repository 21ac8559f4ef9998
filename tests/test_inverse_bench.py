"""The inverse-problem benchmark (benchmarks/inverse.py): its configs build, a discovery summary
becomes the stated rows, the table judges the 1% target only in full mode, and a tiny run of the
discovery case (two seeds, two training processes at a time) writes rows, table and plot."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddpinn.build import build_experiment
from ddpinn.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("inverse")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        sys.modules.pop("inverse", None)


def test_help_runs():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "inverse.py"), "--help"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--quick" in done.stdout


def test_case_configs_build_with_the_true_burgers_terms_in_the_library(bench):
    for case in (c for c in bench.CASES if c.key.startswith("burgers_discovery")):
        for name in {case.quick_config, case.full_config} - {None}:
            exp = build_experiment(load_config(bench.CONFIGS / name))
            assert set(exp.problem.truth) == {"u*u_x", "u_xx"} <= set(exp.problem.candidates.names), name


FOUND = {
    "truth": {"u*u_x": -1.0, "u_xx": 0.003183},
    "coefficients": {"u*u_x": -0.99, "u_xx": 0.00325, "u": 0.01},
    "rel_error": {"u*u_x": 0.01, "u_xx": 0.021},
    "missed": [], "extra": ["u"],
}


def test_rows_of_a_discovery_and_the_verdict(bench):
    rows = bench.discovery_rows("c", "noise1pct", 0, FOUND, "cmd")
    by = {r.quantity: r for r in rows}
    assert by["xi[u*u_x]"].value == -0.99 and by["xi[u*u_x]"].truth == -1.0 and by["xi[u_xx]"].rel_err == 0.021
    assert by["xi[u]"].truth == 0.0 and by["support exact"].value == 0.0 and by["extra terms"].value == 1.0
    assert "| missed |" in bench.table(rows, quick=False)
    exact = dict(FOUND, coefficients={"u*u_x": -0.99, "u_xx": 0.00319}, extra=[], rel_error={"u*u_x": 0.01, "u_xx": 0.002})
    assert "| met |" in bench.table(bench.discovery_rows("c", "noise1pct", 0, exact, ""), quick=False)
    assert "met (quick: not judged)" in bench.table(bench.discovery_rows("c", "noise1pct", 0, exact, ""), quick=True)
    spread = bench.spread_rows(rows + bench.discovery_rows("c", "noise1pct", 1, exact, ""))
    assert {r.quantity: r.value for r in spread}["xi[u_xx] rel_err median"] == pytest.approx((0.021 + 0.002) / 2)


def test_a_tiny_discovery_run_writes_rows_table_and_plot(bench, tmp_path, monkeypatch):
    tiny = {"train.steps": "6", "problem.params.warmup": "3", "problem.params.every": "2",
            "problem.params.observations": "[16, 8]", "sampling.n": "[8, 8]", "sampling.test_n": "[8, 8]",
            "train.log_every": "2", "train.eval_every": "0", "network.hidden": "[4]"}
    case = bench.Case("burgers_discovery", bench.run_discovery, None, "burgers_discovery_quick.yaml", tiny)
    monkeypatch.setattr(bench, "CASES", [case])
    monkeypatch.setattr(bench, "NOISE_LEVELS", {"noise1pct": 0.01})
    out = tmp_path / "out"
    args = ["--quick", "--seeds", "0", "1", "--jobs", "2", "--out", str(out), "--json", str(tmp_path / "rows.json")]
    assert bench.main(args) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {"xi[u*u_x]", "xi[u_xx]", "support exact"} <= {r["quantity"] for r in rows}
    # Two runs side by side, each seed's rows from its own run (the seed is in its command).
    assert {r["seed"] for r in rows if r["seed"] is not None} == {0, 1}
    assert all(f"run.seed={r['seed']}" in r["command"] for r in rows if r["seed"] is not None)
    assert all(set(r) >= {"case", "quantity", "value", "truth", "rel_err"} for r in rows)
    assert "problem.params.noise=0.01" in rows[0]["command"]
    assert (out / "inverse.md").exists() and (out / "inverse_discovery.png").stat().st_size > 0
