"""The adaptive-training benchmark (benchmarks/adaptive.py): every method of a case trains the same
network for the same steps on the same point budget, medians over seeds are what the targets
judge, quick runs are never judged, and one invocation writes rows, table and plots."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_yaml

from ddpinn.build import build_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """benchmarks/adaptive.py as a module importable by name (it imports accuracy.py beside it)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("adaptive")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        sys.modules.pop("adaptive", None)
        sys.modules.pop("accuracy", None)


def test_help_runs():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "adaptive.py"), "--help"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--quick" in done.stdout


@pytest.mark.parametrize("quick", [False, True])
def test_methods_of_a_case_share_network_steps_and_point_budget(bench, tmp_path, quick):
    for case in bench.CASES:
        if quick and case.quick_config is None:
            continue
        jobs = [bench.make_job(case, m, 0, quick=quick, out=tmp_path, threads=1) for m in case.methods]
        if not quick:
            for job in jobs:
                bench.check_report_steps(case, job)  # SystemExit if a reported step is never evaluated
        base = jobs[0].cfg
        budget = build_experiment(base).collocation_count
        for job in jobs:
            cfg = job.cfg
            assert (cfg.network, cfg.decomposition, cfg.train, cfg.optimizer, cfg.lbfgs) == (
                base.network, base.decomposition, base.train, base.optimizer, base.lbfgs), (case.key, job.method)
            count = build_experiment(cfg).collocation_count
            adaptive = cfg.sampling.adaptive
            if adaptive.method == "rar_d":  # grows to the budget by the last sampling event
                events = (cfg.train.steps - 1) // adaptive.every
                assert adaptive.max_points == budget and count < budget <= count + events * adaptive.add
            else:
                assert count == budget, (case.key, job.method)
            if cfg.sampling.resample_every:  # Random-R draws anew as often as RAD
                assert cfg.sampling.resample_every == adaptive.every
            assert job.command.startswith(f"ddpinn train {job.config} ") and "run.seed=0" in job.command


def _row(bench, method: str, seed: int, rel_l2: float, steps: int = 100, final: bool = True):
    return bench.Row("c", method, seed, steps, rel_l2, rel_l2 / 2, rel_l2 / 3, 10.0 + seed if final else None,
                     9.0 if final else None, 50 if final else None, 0.5 if final else None, 2 if final else None,
                     "rad", "fixed", "full", "configs/x.yaml", [], f"ddpinn train x --set run.seed={seed}", "d", "abc")


def _case(bench, *targets):
    return bench.Case("c", "test case", "x", "x_quick", (bench.Method("grid"), bench.Method("rad")), targets=targets)


def test_medians_over_seeds_with_min_and_max(bench):
    rows = [_row(bench, "rad", k, v) for k, v in enumerate((3e-3, 1e-3, 9e-3))]
    (s,) = bench.summarise(rows)
    assert (s.rel_l2.median, s.rel_l2.min, s.rel_l2.max) == (3e-3, 1e-3, 9e-3)
    assert s.seeds == [0, 1, 2] and s.wall_s.median == 11.0 and s.final and "run.seed=0" in s.command


@pytest.mark.parametrize("grid,rad,expected", [
    ((1e-2, 2e-2, 3e-2), (1e-4, 2e-3, 5e-4), True),  # median 2e-2 vs 5e-4: 40x lower
    ((1e-2, 2e-2, 3e-2), (1e-4, 3e-3, 4e-3), False),  # the best RAD seed is 200x lower, the median 6.7x
])
def test_the_ratio_target_compares_medians(bench, grid, rad, expected):
    rows = [_row(bench, "grid", k, v) for k, v in enumerate(grid)] + [_row(bench, "rad", k, v) for k, v in enumerate(rad)]
    case = _case(bench, bench.TimesLower("rad", "grid", 10.0))
    (j,) = bench.judge(case, bench.summarise(rows), quick=False)
    assert j.passed is expected and j.verdict == ("pass" if expected else "miss")


def test_best_of_several_methods_and_no_rise_between_steps(bench):
    rows = [_row(bench, "grid", k, v, steps=15, final=False) for k, v in enumerate((1e-2, 2e-2, 3e-2))]
    rows += [_row(bench, "grid", k, v, steps=30) for k, v in enumerate((5e-2, 6e-2, 7e-2))]
    rows += [_row(bench, "rad", k, v, steps=15, final=False) for k, v in enumerate((8e-3, 9e-3, 1e-2))]
    rows += [_row(bench, "rad", k, v, steps=30) for k, v in enumerate((4e-3, 6e-3, 2e-2))]
    case = _case(bench, bench.AtMost(("grid", "rad"), 7e-3), bench.AtMost(("grid",), 7e-3),
                 bench.NoRise("rad", 15, 30), bench.NoRise("grid", 15, 30), bench.AtMost(("rad",), 5e-3, step=15))
    best, grid_only, falls, rises, early = bench.judge(case, bench.summarise(rows), quick=False)
    assert best.passed and best.measured.startswith("rad 6.00e-03")
    assert grid_only.passed is False
    assert falls.passed and falls.measured == "9.00e-03 -> 6.00e-03"
    assert rises.passed is False and rises.measured == "2.00e-02 -> 6.00e-02"
    assert early.passed is False  # judged at step 15 (8e-3 ... 1e-2), not at the final step


def test_quick_runs_and_missing_methods_are_not_judged(bench):
    rows = [_row(bench, "rad", 0, 1e-9)]
    case = _case(bench, bench.AtMost(("rad",), 1e-3), bench.TimesLower("rad", "grid", 10.0))
    quick = bench.judge(case, bench.summarise(rows), quick=True)
    assert [j.passed for j in quick] == [None, None] and all("quick" in j.verdict for j in quick)
    assert quick[0].measured == "rad 1.00e-09"  # the figure is still shown beside the target
    full = bench.judge(case, bench.summarise(rows), quick=False)
    assert full[0].passed is True and full[1].passed is None and "did not run" in full[1].verdict


TINY = {
    "problem": {"name": "burgers"},
    "decomposition": {"levels": [{"subdomains": [2, 1]}]},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [10, 6], "test_n": [24, 9],
                 "adaptive": {"method": "none", "every": 5, "candidate_factor": 2}},
    "train": {"steps": 12, "log_every": 4, "eval_every": 4, "compile": "off"},
    "run": {"name": "tiny"},
}


def test_one_invocation_writes_rows_table_and_plots(bench, tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    write_yaml(tmp_path / "configs" / "tiny_quick.yaml", TINY)
    monkeypatch.setattr(bench, "REPO", tmp_path)
    monkeypatch.setattr(bench, "CONFIGS", tmp_path / "configs")
    case = bench.Case("tiny", "tiny Burgers", "tiny", "tiny_quick",
                      (bench.GRID, bench.RANDOM_R, bench.RAD, bench.Method("self_adaptive", {"loss.weighting": "self_adaptive"})),
                      targets=(bench.AtMost(("rad",), 1e-9),))
    monkeypatch.setattr(bench, "CASES", (case,))
    out, report = tmp_path / "out", tmp_path / "adaptive.json"

    assert bench.main(["--quick", "--out", str(out), "--json", str(report), "--jobs", "1"]) == 0  # quick: never a miss
    rows = json.loads(report.read_text())
    assert [(r["method"], r["seed"], r["steps"], r["mode"]) for r in rows] == [
        ("grid", 0, 12, "quick"), ("random_r", 0, 12, "quick"), ("rad", 0, 12, "quick"), ("self_adaptive", 0, 12, "quick")]
    by_method = {r["method"]: r for r in rows}
    assert by_method["grid"]["refreshes"] == 0 and by_method["rad"]["refreshes"] == 2  # before steps 5 and 10
    assert by_method["random_r"]["overrides"] == ["sampling.method=uniform", "sampling.resample_every=5"]
    assert all(r["points"] == 60 and r["wall_s"] > 0 and 0 < r["rel_l2"] < 10 for r in rows)
    table = (out / "adaptive.md").read_text()
    assert "not judged (quick" in table and "--set sampling.adaptive.method=rad --set run.seed=0" in table
    for name in ("adaptive_curves.png", "adaptive_points.png", "adaptive_weights.png"):
        assert (out / name).stat().st_size > 0
