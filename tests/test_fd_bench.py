"""benchmarks/fd_vs_jets.py's rows for benchmarks/inverse.py: the real interleaved timing of both
cases for a couple of steps, then fd's ms/step against the jets' of the same rounds."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fd_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = importlib.import_module("fd_vs_jets")
    yield module
    sys.modules.pop("fd_vs_jets", None)


def test_step_time_rows_compare_fd_with_the_jets_of_the_same_rounds(fd_bench, monkeypatch):
    calls = []

    def timed(case, variants, mode, chunk, rounds, extra):
        calls.append((case, tuple(variants), chunk, rounds))
        return {"jets": {"wall": [10.0, 12.0, 11.0], "cpu": [5.0, 6.0, 7.0]},
                "fd:0.02": {"wall": [14.0, 30.0, 15.0], "cpu": [9.0, 9.0, 9.0]}}

    monkeypatch.setattr(fd_bench, "interleaved_times", timed)
    rows = fd_bench.step_time_rows(quick=True)
    assert [c[0] for c in calls] == ["p1", "p4_l4"] and all(c[1] == ("jets", "fd:0.02") for c in calls)
    wall = next(r for r in rows if r["case"] == "fd_vs_jets/p1" and r["quantity"].startswith("fd:0.02 wall"))
    assert (wall["value"], wall["truth"]) == (15.0, 11.0) and wall["rel_err"] == pytest.approx(15 / 11 - 1)
    cpu = next(r for r in rows if r["case"] == "fd_vs_jets/p4_l4" and "cpu" in r["quantity"])
    assert (cpu["value"], cpu["truth"]) == (9.0, 6.0)


def test_the_timing_worker_trains_both_variants(fd_bench):
    times = fd_bench.interleaved_times("p1", ["jets", "fd:0.02"], "eager", 2, 1, ["sampling.n=100"])
    assert set(times) == {"jets", "fd:0.02"}
    assert all(len(t["wall"]) == 1 and t["wall"][0] > 0 and t["cpu"][0] > 0 for t in times.values())
