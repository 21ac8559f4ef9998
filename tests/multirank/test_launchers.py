"""The launch scripts in launch/ and the SLURM path start real multi-rank runs that reproduce
the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .harness import free_port, mpiexec, rel_diff, scaled
from .test_equivalence import config

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, name: str) -> Path:
    cfg = config("poisson2d", "float64")
    cfg["run"].update(output_dir=str(tmp_path), name=name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_loss(tmp_path: Path, name: str) -> float:
    return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])["loss"]


def run(cmd, env=None, timeout=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout or scaled(240))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def single_loss(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    run([sys.executable, "-m", "ddpinn.cli", "train", str(write_config(tmp, "one")), "--quiet"])
    return final_loss(tmp, "one")


def test_torchrun_script(tmp_path, single_loss):
    run(["launch/torchrun.sh", "2", str(write_config(tmp_path, "tr"))])
    assert rel_diff(single_loss, final_loss(tmp_path, "tr")) < 1e-10
    assert (tmp_path / "tr" / "results.h5").exists()


@pytest.mark.skipif(mpiexec() is None, reason="mpiexec not installed")
@pytest.mark.parametrize("comm", ["torch", "mpi"])
def test_mpirun_script(tmp_path, single_loss, comm):
    run(["launch/mpirun.sh", "2", str(write_config(tmp_path, "mpi")), "--set", f"parallel.comm={comm}"],
        env={"MPIEXEC": mpiexec()})
    assert rel_diff(single_loss, final_loss(tmp_path, "mpi")) < 1e-10


def test_srun_style_launch_from_slurm_variables(tmp_path, single_loss):
    """What `srun -n 2 python -m ddpinn.cli train ...` provides, without SLURM itself."""
    path = write_config(tmp_path, "slurm")
    job_port = free_port()
    base = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": str(job_port)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "ddpinn.cli", "train", str(path), "--quiet"], cwd=ROOT,
                         env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=scaled(240))
        assert p.returncode == 0, err[-3000:]
    assert rel_diff(single_loss, final_loss(tmp_path, "slurm")) < 1e-10
