"""benchmarks/schedules.py in a tiny mode: every kind of case (a sweep, coarse-to-fine, network
variants, a sweep on 2 ranks under mpiexec) runs as real ``ddpinn train`` commands and writes its
rows, table and plot; the per-phase step times are read from metrics.jsonl. Slow (ten processes)."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import write_yaml

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")

TINY_2D = {
    "problem": {"name": "burgers"},
    "decomposition": {"levels": [{"subdomains": [2, 2]}]},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [12, 12], "test_n": [16, 9]},
    "train": {"steps": 20, "log_every": 2, "eval_every": 10},
}
TINY_L3 = {
    "problem": {"name": "poisson2d"},
    "decomposition": {"levels": 3},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [12, 12], "test_n": [10, 10]},
    "train": {"steps": 20, "log_every": 5, "eval_every": 5},
}
TINY_1D = {
    "problem": {"name": "cos1d", "params": {"omega": 15}},
    "decomposition": {"levels": [{"subdomains": [6]}]},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": 60, "test_n": 50},
    "train": {"steps": 20, "log_every": 5, "eval_every": 10},
}


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("schedules")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_phase_times_take_the_records_inside_each_phase(bench):
    records = [{"step": 2, "steps_per_s": 1.0}, {"step": 4, "steps_per_s": 100.0}, {"step": 6, "steps_per_s": 50.0},
               {"step": 8, "steps_per_s": 10.0}, {"step": 10, "steps_per_s": 20.0}]
    # Phase [0, 6): the record at 4 (steps 3-4) and at 6 (5-6); the first record (start-up) is left out.
    # Phase [6, 10): the records at 8 and 10.
    assert bench.phase_times(records, ((0, 6), (6, 10))) == [
        {"start": 0, "end": 6, "ms_per_step": 20.0}, {"start": 6, "end": 10, "ms_per_step": 100.0}]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not MPIEXEC.exists() and shutil.which("mpiexec") is None, reason="needs mpiexec")
def test_tiny_run_writes_every_case(bench, tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, data in (("tiny2d", TINY_2D), ("tinyl3", TINY_L3), ("tiny1d", TINY_1D)):
        write_yaml(configs / f"{name}.yaml", data)
    monkeypatch.setattr(bench, "REPO", tmp_path)
    monkeypatch.setattr(bench, "CONFIGS", configs)
    short = {"train.steps": "20"}
    cases = (
        bench.Case("burgers", "tiny sweep", "tiny2d", (bench.ALL_ACTIVE, bench.Method("sweep", bench.sweep())), short),
        bench.Case("p4l5", "tiny coarse to fine", "tinyl3", (bench.ALL_ACTIVE, bench.Method("coarse_to_fine", {
            "schedule.kind": "coarse_to_fine", "schedule.starts": bench.StepFractions((0.0, 0.25, 0.5))})), short),
        bench.Case("p1w80", "tiny networks", "tiny1d", (
            bench.Method("plain"), bench.Method("fourier", {"network.fourier": "{features: 4}"}),
            bench.Method("adaptive", {"network.adaptive_activation": "{kind: layer}"})), short),
        bench.Case("ranks", "tiny sweep on 2 ranks", "tiny2d", (
            bench.Method("sweep, schedule-aware grid", bench.sweep(), ranks=2),
            bench.Method("sweep, time cut", {**bench.sweep(), "parallel.partition_axes": "[t]"}, ranks=2)),
            short, seeds_full=False),
    )
    monkeypatch.setattr(bench, "CASES", cases)
    out, report = tmp_path / "out", tmp_path / "schedules.json"
    assert bench.main(["--quick", "--out", str(out), "--json", str(report)]) == 0
    rows = json.loads(report.read_text())
    assert [(r["case"], r["schedule"], r["ranks"]) for r in rows] == [
        ("burgers", "all_active", 1), ("burgers", "sweep", 1), ("p4l5", "all_active", 1), ("p4l5", "coarse_to_fine", 1),
        ("p1w80", "plain", 1), ("p1w80", "fourier", 1), ("p1w80", "adaptive", 1),
        ("ranks", "sweep, schedule-aware grid", 2), ("ranks", "sweep, time cut", 2)]
    assert all(r["steps"] == 20 and r["wall_s"] > r["train_s"] > 0 and 0 < r["rel_l2"] < 10 for r in rows)
    by = {(r["case"], r["schedule"]): r for r in rows}
    # The sweep's band 0.5 over t in [0, 1]: two phases, each with a measured step time.
    assert [(p["start"], p["end"]) for p in by["burgers", "sweep"]["phase_ms"]] == [(0, 10), (10, 20)]
    assert all(p["ms_per_step"] > 0 for r in rows if r["case"] == "ranks" for p in r["phase_ms"])
    assert "schedule.starts=[0, 5, 10]" in by["p4l5", "coarse_to_fine"]["command"]
    assert by["ranks", "sweep, time cut"]["command"].startswith("mpiexec -n 2 ddpinn train configs/tiny2d.yaml")
    assert len(by["p4l5", "coarse_to_fine"]["curve"]) == 4  # evaluated every 5 steps
    assert "| tiny sweep on 2 ranks | sweep, time cut | 2 |" in (out / "schedules.md").read_text()
    assert (out / "schedules.png").stat().st_size > 0
