"""benchmarks/gpu_check.py runs its stages on the CPU (what CI can run of the GPU check): every
stage gives its figures, the float64 checks agree, a stage that fails is recorded and the next
one runs, and the time budget skips what it cannot hold."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        sys.modules.pop("gpu_check", None)


@pytest.mark.distributed  # the gloo stage starts 2 ranks under torchrun
def test_the_cpu_check_runs_every_stage_and_the_float64_runs_agree(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("env ") and "torch " in lines[0] and "NCCL" in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == ["device_vs_cpu", "gloo_2ranks", "speed_L2"]
    report = json.loads(out.read_text())
    assert report["env"]["torch"] and report["env"]["cuda_available"] in (True, False)
    stages = report["stages"]
    assert {name: s["status"] for name, s in stages.items()} == {
        "speed_L2": "ok", "device_vs_cpu": "ok", "gloo_2ranks": "ok"}
    speed = stages["speed_L2"]["result"]
    assert speed["ms_per_step"] > 0 and speed["pairs"] == 424 and speed["peak_memory_mb"] > 0
    assert speed["us_per_pair"] == pytest.approx(1e3 * speed["ms_per_step"] / speed["pairs"])
    for name in ("device_vs_cpu", "gloo_2ranks"):
        diffs = stages[name]["result"]["rel_diff"]
        assert diffs and all(d <= stages[name]["result"]["tolerance"] for d in diffs.values()), diffs
    assert stages["gloo_2ranks"]["result"]["compared_arrays"] > 0
    assert "partitioned" in stages["gloo_2ranks"]["result"]["layout_2ranks"]


def test_a_failing_stage_is_recorded_and_the_next_one_runs(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    status = gpu_check.main(["--device", "cpu", "--levels", "9", "2", "--steps", "1", "--skip", "device_vs_cpu",
                             "gloo_2ranks", "--out", str(out)])
    assert status == 1
    stages = json.loads(out.read_text())["stages"]
    assert stages["speed_L9"]["status"] == "failed"
    assert "--levels: P4 is set up here for L = 2..8, got 9" in stages["speed_L9"]["error"]
    assert stages["speed_L2"]["status"] == "ok"
    assert stages["gloo_2ranks"] == {"status": "skipped", "error": "--skip"}
    assert "not ok: speed_L9" in capsys.readouterr().out


def test_a_spent_budget_skips_the_remaining_stages(gpu_check, tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--budget-s", "0", "--out", str(out)]) == 0
    stages = json.loads(out.read_text())["stages"]
    assert set(stages) == {"speed_L2", "device_vs_cpu", "gloo_2ranks"}
    assert all(s["status"] == "skipped" and "time budget spent" in s["error"] for s in stages.values())


def test_level_8_is_level_7_with_more_points_and_frequencies(gpu_check):
    config, overrides = gpu_check.p4_overrides(8)
    assert config == "configs/poisson2d_L7.yaml"
    assert overrides == ["decomposition.levels=8", "sampling.n=[640,640]",
                         "problem.params.frequencies=[2,4,8,16,32,64,128]"]
    assert gpu_check.p4_overrides(5) == ("configs/poisson2d_L5.yaml", [])
