"""Launcher detection: who am I, how many are we, and how were we started.

Defines :class:`DistEnv` and :func:`detect_env`, one pure function of the environment
variables. Order: an explicit choice (``parallel.launcher`` or ``DDPINN_LAUNCHER``), then
torchrun's variables (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), SLURM (``SLURM_PROCID``...),
Open MPI (``OMPI_COMM_WORLD_*``), MPICH/Hydra PMI (``PMI_RANK``/``PMI_SIZE``), else one process.
No side effects: nothing is initialised, seeded or imported here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DistEnv", "LaunchMethod", "detect_env", "LaunchError", "first_slurm_host"]


class LaunchError(RuntimeError):
    pass


class LaunchMethod(StrEnum):
    NONE = "none"
    ENV = "env"  # torchrun / torch.distributed.launch
    SLURM = "slurm"
    MPI = "mpi"  # Open MPI or MPICH/PMI (mpirun, mpiexec, srun --mpi=pmi2)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    method: LaunchMethod
    master_addr: str | None = None
    master_port: int | None = None
    restart: int = 0
    """How many times torchrun restarted the job (``TORCHELASTIC_RESTART_COUNT``): what one
    attempt posts to the rendezvous store must not be read by the next."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head:
        return nodelist
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _torchrun(env) -> DistEnv | None:
    rank, size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    if rank is None or size is None:
        return None
    return DistEnv(
        rank, size, _int(env, "LOCAL_RANK") or 0, _int(env, "LOCAL_WORLD_SIZE") or size, LaunchMethod.ENV,
        env.get("MASTER_ADDR"), _int(env, "MASTER_PORT"), _int(env, "TORCHELASTIC_RESTART_COUNT") or 0,
    )


def _slurm(env) -> DistEnv | None:
    # Only inside an srun step: a batch script itself also sees SLURM_PROCID=0 and SLURM_NTASKS.
    rank, size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS")
    if rank is None or size is None:
        return None
    job = _int(env, "SLURM_JOB_ID") or 0
    host = first_slurm_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost")
    local_size = _int(env, "SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE")
    return DistEnv(
        rank, size, _int(env, "SLURM_LOCALID") or 0, local_size or size, LaunchMethod.SLURM,
        env.get("MASTER_ADDR", host), _int(env, "MASTER_PORT") or 20000 + job % 20000,
    )


def _mpi(env) -> DistEnv | None:
    rank = _int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    size = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if rank is None or size is None:
        return None
    local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID") or 0
    local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") or size
    # The rendezvous address and port are broadcast through mpi4py by the backend.
    return DistEnv(rank, size, local, local_size, LaunchMethod.MPI)


_DETECTORS = {LaunchMethod.ENV: _torchrun, LaunchMethod.SLURM: _slurm, LaunchMethod.MPI: _mpi}


def detect_env(launcher: str = "auto", environ: Mapping[str, str] | None = None) -> DistEnv:
    """The process's place in the job. ``launcher``: ``auto`` or a :class:`LaunchMethod` value."""
    env = os.environ if environ is None else environ
    launcher = env.get("DDPINN_LAUNCHER", launcher)
    single = DistEnv(0, 1, 0, 1, LaunchMethod.NONE)
    if launcher == LaunchMethod.NONE:
        return single
    if launcher != "auto":
        try:
            method = LaunchMethod(launcher)
        except ValueError:
            raise LaunchError(f"parallel.launcher: unknown launcher {launcher!r}") from None
        found = _DETECTORS[method](env)
        if found is None:
            raise LaunchError(f"parallel.launcher: {launcher} requested but its environment variables are not set")
        return found
    for method in (LaunchMethod.ENV, LaunchMethod.SLURM, LaunchMethod.MPI):
        found = _DETECTORS[method](env)
        if found is not None and (found.world_size > 1 or method == LaunchMethod.ENV):
            return found
    return single
