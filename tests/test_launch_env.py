"""Launcher detection is one pure function of the environment."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ddpinn.parallel.env import DistEnv, LaunchError, LaunchMethod, detect_env, first_slurm_host

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
            "MASTER_ADDR": "node7", "MASTER_PORT": "29500"}
SLURM_STEP = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "12345",
              "SLURM_STEP_NODELIST": "gpu[03-04]", "SLURM_NTASKS": "8"}
OMPI = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
HYDRA = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, (0, 1, 0, LaunchMethod.NONE)),
        (TORCHRUN, (3, 8, 1, LaunchMethod.ENV)),
        ({**SLURM_STEP, **TORCHRUN}, (3, 8, 1, LaunchMethod.ENV)),  # srun + torchrun: torchrun's view wins
        (SLURM_STEP, (5, 8, 1, LaunchMethod.SLURM)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, (0, 1, 0, LaunchMethod.NONE)),  # a batch script, not a step
        (OMPI, (2, 4, 0, LaunchMethod.MPI)),
        (HYDRA, (1, 2, 1, LaunchMethod.MPI)),
        ({"PMI_RANK": "0", "PMI_SIZE": "1"}, (0, 1, 0, LaunchMethod.NONE)),
    ],
)
def test_detect(env, expected):
    e = detect_env("auto", env)
    assert (e.rank, e.world_size, e.local_rank, e.method) == expected


def test_torchrun_restart_count_separates_attempts():
    """What one torchrun attempt posts to the rendezvous store (failure reports) is keyed by attempt."""
    assert detect_env("auto", TORCHRUN).restart == 0
    assert detect_env("auto", {**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "2"}).restart == 2


def test_slurm_rendezvous_from_nodelist_and_job_id():
    e = detect_env("auto", SLURM_STEP)
    assert e.master_addr == "gpu03" and e.master_port == 20000 + 12345 % 20000


def test_explicit_and_environment_override():
    assert detect_env("none", TORCHRUN).world_size == 1
    assert detect_env("auto", {**TORCHRUN, "DDPINN_LAUNCHER": "none"}).world_size == 1
    assert detect_env("mpi", {**TORCHRUN, **OMPI}).method == LaunchMethod.MPI
    with pytest.raises(LaunchError, match="slurm requested but its environment variables are not set"):
        detect_env("slurm", TORCHRUN)


@pytest.mark.parametrize("nodelist,host", [("node01", "node01"), ("gpu[03-05,9]", "gpu03"), ("a[1,2],b3", "a1")])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_threads_follow_config_then_omp_num_threads_then_cores_per_local_rank(monkeypatch):
    from ddpinn.perf import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(2, 1) == 2 and torch.get_num_threads() == 2
        assert set_threads(None, 1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        from ddpinn.perf import available_cores

        cores = available_cores()
        assert set_threads(None, 2) == max(1, (cores - 1) // 2)  # one core left for other processes
        assert set_threads(None, 4 * cores) == 1
    finally:
        torch.set_num_threads(before)


def test_comm_auto_uses_mpi_for_cpu_ranks_that_mpi_launched():
    from ddpinn.parallel.backends import resolve_comm

    mpi = DistEnv(0, 2, 0, 2, LaunchMethod.MPI)
    torchrun = DistEnv(0, 2, 0, 2, LaunchMethod.ENV)
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    have_mpi4py = importlib.util.find_spec("mpi4py") is not None
    assert resolve_comm("auto", mpi, cpu) == ("mpi" if have_mpi4py else "torch")
    assert resolve_comm("auto", mpi, gpu) == "torch"
    assert resolve_comm("auto", torchrun, cpu) == "torch"
    assert resolve_comm("torch", mpi, cpu) == "torch"
    assert resolve_comm("mpi", torchrun, cpu) == "mpi"
