"""The scripts in launch/ check their arguments before launching anything: a count that is not a
whole number >= 1, or a config file that does not exist, stops them with a usage message and
exit status 2. The launchers they call (mpiexec, torchrun, srun, scontrol) are stubs here that
record their arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/poisson2d_L5.yaml"
MULTINODE = {"NNODES": "2", "NPROC_PER_NODE": "4", "RDZV_HOST": "node01"}


@pytest.fixture
def stubs(tmp_path):
    """A PATH whose mpiexec, torchrun, srun and scontrol append their arguments to calls.log."""
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mpiexec", "torchrun", "srun", "scontrol"):
        stub = bin_dir / name
        stub.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n'
                        + ('echo node01\n' if name == "scontrol" else ""))
        stub.chmod(0o755)

    def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if k not in ("MPIEXEC", *MULTINODE, "GPUS_PER_NODE")}
        environ = {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT),
                   "SLURM_JOB_NODELIST": "node01", "SLURM_NNODES": "1", "SLURM_JOB_ID": "7", **env}
        cmd = ["bash", f"launch/{script}", *args] if script.endswith(".sbatch") else [f"launch/{script}", *args]
        return subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30)

    run.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return run


@pytest.mark.parametrize(
    "script,args,env,problem",
    [
        ("mpirun.sh", ["-2", CONFIG], {}, "NPROC must be a whole number >= 1, got '-2'"),
        ("mpirun.sh", ["two", CONFIG], {}, "NPROC must be a whole number >= 1, got 'two'"),
        ("mpirun.sh", ["0", CONFIG], {}, "NPROC must be a whole number >= 1, got '0'"),
        ("mpirun.sh", [CONFIG], {}, "need NPROC and CONFIG"),
        ("mpirun.sh", ["2", "configs/missing.yaml"], {}, "config file 'configs/missing.yaml' does not exist"),
        ("torchrun.sh", ["2.5", CONFIG], {}, "NPROC must be a whole number >= 1, got '2.5'"),
        ("torchrun.sh", ["2", "nope.yaml"], {}, "config file 'nope.yaml' does not exist"),
        ("torchrun_multinode.sh", [CONFIG], {**MULTINODE, "NNODES": "-1"}, "NNODES must be a whole number >= 1"),
        ("torchrun_multinode.sh", [CONFIG], {**MULTINODE, "NPROC_PER_NODE": ""}, "NPROC_PER_NODE must be a whole"),
        ("torchrun_multinode.sh", [CONFIG], {**MULTINODE, "RDZV_HOST": ""}, "set RDZV_HOST"),
        ("torchrun_multinode.sh", [], MULTINODE, "no CONFIG given"),
        ("slurm_mpi.sbatch", ["missing.yaml"], {}, "config file 'missing.yaml' does not exist"),
        ("slurm_torchrun.sbatch", [CONFIG], {"GPUS_PER_NODE": "four"}, "GPUS_PER_NODE must be a whole number"),
        ("slurm_torchrun.sbatch", [], {}, "no CONFIG given"),
    ],
)
def test_bad_arguments_stop_with_usage_and_status_2(stubs, script, args, env, problem):
    proc = stubs(script, *args, **env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: "), proc.stderr
    assert problem in proc.stderr, proc.stderr
    assert stubs.calls() == [], "nothing may be launched"


@pytest.mark.parametrize(
    "script,args,env,expected",
    [
        ("mpirun.sh", ["2", CONFIG, "--set", "train.steps=5"], {},
         f"mpiexec -n 2 python -m ddpinn.cli train {CONFIG} --set train.steps=5"),
        ("mpirun.sh", ["3", "--resume", "runs/x"], {}, "mpiexec -n 3 python -m ddpinn.cli train --resume runs/x"),
        ("torchrun.sh", ["4", CONFIG], {}, f"torchrun --standalone --nproc_per_node=4 -m ddpinn.cli train {CONFIG}"),
        ("torchrun_multinode.sh", [CONFIG], MULTINODE, ("torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d "
         f"--rdzv_endpoint=node01:29500 --rdzv_id=ddpinn -m ddpinn.cli train {CONFIG}")),
        ("slurm_mpi.sbatch", [CONFIG], {}, f"srun --mpi=pmix python -m ddpinn.cli train {CONFIG}"),
        ("slurm_torchrun.sbatch", [CONFIG], {}, ("srun torchrun --nnodes=1 --nproc_per_node=4 --rdzv_backend=c10d "
         f"--rdzv_endpoint=node01:29500 --rdzv_id=7 -m ddpinn.cli train {CONFIG}")),
    ],
)
def test_good_arguments_reach_the_launcher(stubs, script, args, env, expected):
    proc = stubs(script, *args, **env)
    assert proc.returncode == 0, proc.stderr
    assert stubs.calls()[-1] == expected
