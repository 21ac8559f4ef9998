"""Multi-process communicators: torch.distributed (NCCL on GPU, gloo on CPU) and mpi4py.

Defines :class:`TorchComm`, :class:`MpiComm` and :func:`open_communicator`, which picks one
from the launch environment (:class:`~ddpinn.parallel.env.DistEnv`) and ``parallel.comm``.

* ``comm: torch`` — torch.distributed. Under torchrun the rendezvous comes from its
  environment; under SLURM from the first node of the step and a port derived from the job id;
  under mpirun/mpiexec rank 0's address and a free port are broadcast through mpi4py (the only
  use of MPI in this mode). Every collective carries the process-group timeout.
* ``comm: mpi`` — every message through mpi4py (CPU clusters with a native MPI interconnect).
  Non-blocking operations are polled against a deadline, so a dead or stuck peer becomes a
  :class:`CommError` instead of a hang, and the job is aborted.

mpi4py is imported only by code paths that need it.
"""

from __future__ import annotations

import datetime
import gc
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpinn.config import ParallelConfig
from ddpinn.parallel.comm import CommError, Communicator
from ddpinn.parallel.env import DistEnv, LaunchMethod

__all__ = ["TorchComm", "MpiComm", "open_communicator"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_world():
    from mpi4py import MPI

    return MPI, MPI.COMM_WORLD


class TorchComm(Communicator):
    """torch.distributed process group; ``nccl`` for CUDA devices, ``gloo`` otherwise."""

    def __init__(self, env: DistEnv, device: torch.device, timeout_s: float) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world_size = env.rank, env.world_size
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.name = f"torch.distributed/{self.backend}"
        self.device = device
        self._failed = False
        timeout = datetime.timedelta(seconds=timeout_s)
        if env.method == LaunchMethod.ENV and env.master_addr:
            init_method = "env://"
        elif env.method == LaunchMethod.MPI:
            _, world = _mpi_world()
            addr = socket.gethostbyname(socket.gethostname()) if env.rank == 0 else None
            port = _free_port() if env.rank == 0 else None
            addr, port = world.bcast((addr, port), root=0)
            init_method = f"tcp://{addr}:{port}"
        else:
            if not env.master_addr or not env.master_port:
                raise CommError(f"{env.method} launch: no rendezvous address (set MASTER_ADDR and MASTER_PORT)")
            init_method = f"tcp://{env.master_addr}:{env.master_port}"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(
                self.backend, init_method=init_method, rank=env.rank, world_size=env.world_size, timeout=timeout
            )
        except Exception as err:  # noqa: BLE001 - rendezvous failures come in many types
            raise CommError(f"could not form the process group at {init_method}: {err}") from err

    def _guard(self, what: str, fn):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - gloo/nccl report peer failures as RuntimeError
            self._failed = True
            raise CommError(f"rank {self.rank}: {what} failed (a peer died, raised or timed out): {err}") from err

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        # Setup-time tensors live on the CPU; NCCL only reduces device tensors.
        work = tensor if tensor.device == self.device else tensor.to(self.device)
        self._guard("all_reduce", lambda: self.dist.all_reduce(work))
        return work if work is tensor else work.to(tensor.device)

    def exchange(
        self, sends: Mapping[int, Tensor], recv_shapes: Mapping[int, tuple[int, ...]], dtype: torch.dtype
    ) -> dict[int, Tensor]:
        received = {q: torch.empty(shape, dtype=dtype, device=self.device) for q, shape in recv_shapes.items()}

        def run() -> None:
            works = [self.dist.irecv(buf, q) for q, buf in received.items() if buf.numel()]
            works += [self.dist.isend(t.to(self.device).contiguous(), q) for q, t in sends.items() if t.numel()]
            for work in works:
                work.wait()

        self._guard("neighbour exchange", run)
        return received

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._guard("allgather_object", lambda: self.dist.all_gather_object(out, obj))
        return out

    def close(self) -> None:
        if self.dist.is_initialized() and not self._failed:
            # gloo work objects still alive at interpreter exit abort the process (SIGABRT,
            # "terminate called without an active exception"): free them, then tear down together.
            gc.collect()
            self._guard("final barrier", self.dist.barrier)
            self.dist.destroy_process_group()


_SPIN_S = 0.02
"""How long MpiComm polls a pending request without sleeping."""


class MpiComm(Communicator):
    """All communication through mpi4py, with deadline-polled non-blocking operations."""

    def __init__(self, env: DistEnv, device: torch.device, timeout_s: float) -> None:
        self.MPI, self.world = _mpi_world()
        if self.world.Get_size() != env.world_size:
            raise CommError(
                f"parallel.comm=mpi: MPI sees {self.world.Get_size()} ranks but the launcher reports "
                f"{env.world_size}; launch with mpirun/mpiexec/srun --mpi"
            )
        self.rank, self.world_size = self.world.Get_rank(), self.world.Get_size()
        self.name = "mpi4py"
        self.device = device
        self.timeout_s = timeout_s
        self._failed = False

    def _wait(self, what: str, requests: list) -> None:
        # Spin first, as a blocking MPI call would: a sleep costs ~0.5 ms whatever its argument
        # (timer slack), 50x a 2-rank all-reduce. Only a wait that outlasts the spin (a slow or
        # dead peer) backs off to sleeping, so that it does not burn a core until the deadline.
        start = time.monotonic()
        deadline = start + self.timeout_s
        while not self.MPI.Request.Testall(requests):
            now = time.monotonic()
            if now > deadline:
                self._failed = True
                raise CommError(f"rank {self.rank}: {what} timed out after {self.timeout_s:g} s (a peer died or is stuck)")
            if now - start > _SPIN_S:
                time.sleep(1e-4)

    def _host(self, tensor: Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy())

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        send = self._host(tensor)
        recv = np.empty_like(send)
        self._wait("all_reduce", [self.world.Iallreduce(send, recv, op=self.MPI.SUM)])
        return torch.from_numpy(recv).to(tensor.device)

    def exchange(
        self, sends: Mapping[int, Tensor], recv_shapes: Mapping[int, tuple[int, ...]], dtype: torch.dtype
    ) -> dict[int, Tensor]:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        buffers = {q: np.empty(shape, dtype=np_dtype) for q, shape in recv_shapes.items()}
        send_data = [self._host(t) for t in sends.values()]
        requests = [self.world.Irecv(buf, source=q, tag=7) for q, buf in buffers.items() if buf.size]
        requests += [self.world.Isend(d, dest=q, tag=7) for q, d in zip(sends, send_data) if d.size]
        if requests:
            self._wait("neighbour exchange", requests)
        return {q: torch.from_numpy(buf).to(self.device) for q, buf in buffers.items()}

    def allgather_object(self, obj: Any) -> list[Any]:
        # A deadline-polled barrier first: once every rank is present the blocking gather completes.
        self._wait("allgather_object (barrier)", [self.world.Ibarrier()])
        return self.world.allgather(obj)

    def barrier(self) -> None:
        self._wait("barrier", [self.world.Ibarrier()])

    def close(self) -> None:
        if self._failed:
            self.world.Abort(4)


def resolve_comm(choice: str, env: DistEnv, device: torch.device) -> str:
    """``parallel.comm`` with ``auto`` resolved: mpi4py for CPU ranks that MPI launched, if installed."""
    if choice != "auto":
        return choice
    if env.method is not LaunchMethod.MPI or device.type != "cpu":
        return "torch"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "torch"
    return "mpi"


def open_communicator(env: DistEnv, cfg: ParallelConfig, device: torch.device) -> Communicator:
    if resolve_comm(cfg.comm, env, device) == "mpi":
        if device.type != "cpu":
            raise CommError("parallel.comm=mpi moves tensors through host memory; use comm: torch (NCCL) on GPUs")
        return MpiComm(env, device, cfg.timeout_s)
    return TorchComm(env, device, cfg.timeout_s)
