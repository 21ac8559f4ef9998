"""Multi-process communicators: torch.distributed (NCCL on GPU, gloo on CPU) and mpi4py.

Defines :class:`TorchComm`, :class:`MpiComm` and :func:`open_communicator`, which picks one
from the launch environment (:class:`~ddpinn.parallel.env.DistEnv`) and ``parallel.comm``.

* ``comm: torch`` — torch.distributed, NCCL for CUDA devices and gloo otherwise.
  ``comm: gloo`` — torch.distributed with gloo on any device: several ranks may share one GPU
  (NCCL refuses two ranks on one device), and gloo's point-to-point, which takes host tensors
  only, is staged through host memory. Under torchrun the rendezvous comes from its
  environment; under SLURM from the first node of the step and a port derived from the job id;
  under mpirun/mpiexec rank 0's address and a free port are broadcast through mpi4py (the only
  use of MPI in this mode). Failures travel through the rendezvous store.
* ``comm: mpi`` — every message through mpi4py (CPU clusters with a native MPI interconnect).
  Failures travel on a dedicated tag.

Every wait is polled against ``parallel.timeout_s``. A wait that outlasts a short spin also
reads the failure channel (:mod:`ddpinn.parallel.failure`): a peer that raised stops this rank
within a poll interval (:class:`~ddpinn.parallel.failure.PeerFailedError`), and a wait that
reaches the deadline names the collective and the ranks that did not answer. A healthy step
never reads the channel. mpi4py is imported only by code paths that need it.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpinn.config import ParallelConfig
from ddpinn.parallel.comm import CommError, Communicator
from ddpinn.parallel.env import DistEnv, LaunchMethod
from ddpinn.parallel.failure import (
    REASON_WAIT_S,
    REPORT_WAIT_S,
    FailureChannel,
    MpiChannel,
    PeerFailedError,
    RankEnding,
    RankFailure,
    StoreChannel,
    format_ranks,
    note_ending,
)

__all__ = ["TorchComm", "MpiComm", "open_communicator", "resolve_comm", "torch_backend", "p2p_ops"]

_SPIN_S = 0.02
"""How long a wait runs before it reads the failure channel: MpiComm polls its requests without
sleeping for this long; TorchComm blocks on the work for this long."""
_POLL_S = 0.05
"""Interval between reads of the failure channel once a wait outlasted the spin, for up to 32
ranks; more ranks read it less often (one store serves them all)."""
_BACKEND_MARGIN_S = 10.0
"""torch.distributed's own timeout exceeds ``parallel.timeout_s`` by this much, so that
ddpinn's deadline, which names the ranks waited for, comes first."""
_STORE_OP_TIMEOUT_S = 10.0
"""Timeout of one read or write of the failure channel's store connection."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_world():
    from mpi4py import MPI

    return MPI, MPI.COMM_WORLD


class _ChannelComm(Communicator):
    """What both multi-process communicators share: call labels, the deadline's message, the
    failure channel and the report of this rank's own failure."""

    channel: FailureChannel
    timeout_s: float

    def _init_failure_handling(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.poll_s = _POLL_S * max(1.0, self.world_size / 32)
        self._calls: dict[str, int] = {}
        self._failed = False

    def _label(self, kind: str) -> str:
        """``"all_reduce #12"``: the same on every rank, since every rank makes the same calls."""
        n = self._calls[kind] = self._calls.get(kind, 0) + 1
        return f"{kind} #{n}"

    def _check_peers(self, what: str) -> None:
        failure = self.channel.poll(f"waiting in {what}")
        if failure is not None:
            self._failed = True
            raise PeerFailedError(failure, self.rank, what)

    def _timed_out(self, what: str, waiting_for: Sequence[int] = ()) -> CommError:
        """The error for a wait that reached ``parallel.timeout_s``; ``waiting_for``: the peers
        whose messages are missing, where the operation knows them (point-to-point)."""
        return self._give_up(what, f"timed out after {self.timeout_s:g} s", waiting_for, timed_out=True)

    def _give_up(self, what: str, problem: str, waiting_for: Sequence[int] = (), timed_out: bool = False) -> CommError:
        """Tell the others that this rank stops in ``what`` and return the error to raise. The
        ranks that do not answer within ``ACK_WAIT_S`` are named: after a timeout they are the
        ones waited for (unless ``waiting_for`` says)."""
        self._failed = True
        message = f"{what} {problem}"
        answers = self.channel.announce(RankFailure(self.rank, "CommError", message))
        silent = [q for q in range(self.world_size) if q != self.rank and q not in answers]
        why = "stopped, stuck outside a collective, or dead"
        if timed_out and (waiting_for or silent):
            message += f" waiting for {format_ranks(waiting_for or silent)}"
            if silent and (not waiting_for or set(silent) == set(waiting_for)):
                message += f" (no answer: {why})"
            elif silent:
                message += f"; no answer from {format_ranks(silent)} ({why})"
        elif silent:
            message += f"; no answer from {format_ranks(silent)} ({why})"
        # Ranks waiting in another collective than this one: calls out of step.
        elsewhere = {q: s for q, s in answers.items() if s.startswith("waiting in") and s != f"waiting in {what}"}
        message += "".join(f"; rank {q} is {s}" for q, s in sorted(elsewhere.items())[:8])
        return CommError(message)

    def report_failure(self, err: BaseException) -> None:
        if isinstance(err, PeerFailedError):
            note_ending(err, RankEnding(self.rank, self.world_size, reports=self.rank == 0, stopped_by_peer=True))
            return
        self._failed = True
        own = self.channel.posted or RankFailure.of(err, self.rank)
        self.channel.announce(own, REPORT_WAIT_S)
        reported_below = any(q < self.rank and f.same_error(own) for q, f in self.channel.failures.items())
        note_ending(err, RankEnding(self.rank, self.world_size, reports=not reported_below, stopped_by_peer=False))


def p2p_ops(dist, rank: int, receives: Mapping[int, Tensor], sends: Mapping[int, Tensor]) -> list[tuple[int, Any]]:
    """One neighbour exchange as the ``(peer, P2POp)`` list of a single ``batch_isend_irecv``:
    the receives, then the sends, each in peer order, zero-size messages left out (both sides
    know the size, so both leave them out). ``dist``: the torch.distributed module.

    Why one batch: NCCL runs ungrouped isend/irecv one after another on the stream, so two ranks
    that each start with a receive from the other deadlock; inside one group the order of sends
    and receives does not matter. Each pair of ranks has at most one message per direction, so
    no two ops in the list could be matched the wrong way round."""
    for q in (*receives, *sends):
        if q == rank:
            raise CommError(f"rank {rank}: a neighbour exchange listed this rank as its own neighbour")
    ops = [(q, dist.P2POp(dist.irecv, buf, q)) for q, buf in sorted(receives.items()) if buf.numel()]
    ops += [(q, dist.P2POp(dist.isend, t, q)) for q, t in sorted(sends.items()) if t.numel()]
    return ops


def torch_backend(comm: str, device: torch.device) -> str:
    """The torch.distributed backend of ``parallel.comm`` (``torch`` or ``gloo``) on ``device``."""
    return "nccl" if comm == "torch" and device.type == "cuda" else "gloo"


class TorchComm(_ChannelComm):
    """torch.distributed process group: ``backend`` ``nccl`` (CUDA devices) or ``gloo`` (any).

    How waits see a peer's failure: collectives (all-reduce, barrier) are waited for in slices
    and read the channel between slices. gloo's point-to-point works cannot be waited for in
    slices (a timed-out wait breaks every connection of the rank), so the neighbour exchange
    blocks until the failed neighbour's process ends (the CLI ends it within
    ``REPORT_WAIT_S`` of the failure) and its connections close; the rank then reads the
    neighbour's report (``REASON_WAIT_S``). NCCL's exchange only makes the stream wait; its
    failures surface at the step's all-reduce, whose completion is polled.
    """

    def __init__(self, env: DistEnv, device: torch.device, timeout_s: float, backend: str | None = None) -> None:
        """``backend``: ``nccl`` or ``gloo``; by default NCCL for CUDA devices, gloo otherwise."""
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world_size = env.rank, env.world_size
        self.backend = backend or torch_backend("torch", device)
        self.name = f"torch.distributed/{self.backend}"
        self.device = device
        # Where messages travel: gloo's point-to-point takes host tensors only.
        self.wire_device = torch.device("cpu") if self.backend == "gloo" else device
        self._init_failure_handling(timeout_s)
        self._await = self._await_gloo if self.backend == "gloo" else self._await_cuda
        self._first_slice = datetime.timedelta(seconds=_SPIN_S)
        self._slice = datetime.timedelta(seconds=self.poll_s)
        self._p2p_timeout = datetime.timedelta(seconds=timeout_s)
        host, port, init_method = self._rendezvous_address(env)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend_timeout = datetime.timedelta(seconds=timeout_s + _BACKEND_MARGIN_S)
        try:
            # The rendezvous store is kept here: on rank 0 it hosts the store server, which must
            # outlive the process group (the failure channel lives in it).
            self._store, _, _ = next(dist.rendezvous(init_method, env.rank, env.world_size, timeout=backend_timeout))
            # NCCL: device_id creates the communicator now, over all ranks; a batch of
            # point-to-point ops that came first would create it for a subset of ranks only
            # (undefined behaviour, says batch_isend_irecv's documentation).
            dist.init_process_group(
                self.backend, store=self._store, rank=env.rank, world_size=env.world_size, timeout=backend_timeout,
                device_id=device if self.backend == "nccl" else None,
            )
            # The channel reads through a connection of its own, with short timeouts, under a
            # prefix per torchrun attempt.
            channel_store = dist.TCPStore(host, port, is_master=False,
                                          timeout=datetime.timedelta(seconds=_STORE_OP_TIMEOUT_S))
        except Exception as err:  # rendezvous failures come in many types
            raise CommError(f"could not form the process group at {init_method}: {err}") from err
        self.channel = StoreChannel(
            dist.PrefixStore(f"ddpinn/attempt{env.restart}/", channel_store), self.rank, self.world_size, (host, port)
        )

    @staticmethod
    def _rendezvous_address(env: DistEnv) -> tuple[str, int, str]:
        """(host, port, init_method) of the store the process group is formed on."""
        if env.method == LaunchMethod.ENV and env.master_addr and env.master_port:
            return env.master_addr, env.master_port, "env://"
        if env.method == LaunchMethod.MPI:
            _, world = _mpi_world()
            addr = socket.gethostbyname(socket.gethostname()) if env.rank == 0 else None
            port = _free_port() if env.rank == 0 else None
            addr, port = world.bcast((addr, port), root=0)
            return addr, port, f"tcp://{addr}:{port}"
        if not env.master_addr or not env.master_port:
            raise CommError(f"{env.method} launch: no rendezvous address (set MASTER_ADDR and MASTER_PORT)")
        return env.master_addr, env.master_port, f"tcp://{env.master_addr}:{env.master_port}"

    def _start(self, what: str, issue: Callable[[], Any]) -> Any:
        try:
            return issue()
        except Exception as err:  # gloo/nccl report broken connections as RuntimeError
            raise self._broken(what, err) from err

    def _broken(self, what: str, err: Exception) -> CommError:
        """The error for an operation that failed: the report of the peer whose failure broke
        the connection if it posts one, else this rank's own."""
        failure = self.channel.await_failure(f"waiting in {what}", REASON_WAIT_S)
        if failure is not None:
            self._failed = True
            return PeerFailedError(failure, self.rank, what)
        return self._give_up(what, f"failed ({err})")

    def _await_gloo(self, what: str, works: Sequence[tuple[int | None, Any]], collective: bool) -> None:
        """Wait for every ``(peer, work)`` (peer None for collectives)."""
        start = time.monotonic()
        if not collective:  # point-to-point: one blocking wait each, gloo's own deadline
            for _, work in works:
                try:
                    work.wait(self._p2p_timeout)
                except RuntimeError as err:
                    if time.monotonic() - start < self.timeout_s:
                        raise self._broken(what, err) from err
                    late = [q for q, w in works if not w.is_completed()]
                    raise self._timed_out(what, [] if None in late else late) from err
            return
        timeout = self._first_slice
        for _, work in works:
            while True:
                try:
                    work.wait(timeout)
                    break
                except RuntimeError as err:
                    # The slice ran out, or the operation failed (a peer died or closed). A
                    # completed work says which: waiting on it again returns or re-raises at once.
                    if work.is_completed():
                        try:
                            work.wait(timeout)
                            break
                        except RuntimeError as failed:
                            raise self._broken(what, failed) from err
                timeout = self._slice
                self._check_peers(what)
                if time.monotonic() - start > self.timeout_s:
                    raise self._timed_out(what)

    def _await_cuda(self, what: str, works: Sequence[tuple[int | None, Any]], collective: bool) -> None:
        if not collective:  # the stream waits; a peer's failure surfaces at the step's all-reduce
            for _, work in works:
                work.wait()
            return
        # Spin on the completion query while the step's kernels finish; a wait that outlasts
        # the spin sleeps between queries and reads the channel every poll interval.
        start = time.monotonic()
        next_check = start + _SPIN_S
        for _, work in works:
            while not work.is_completed():
                now = time.monotonic()
                if now - start < _SPIN_S:
                    continue
                if now >= next_check:
                    self._check_peers(what)
                    if now - start > self.timeout_s:
                        raise self._timed_out(what)
                    next_check = now + self.poll_s
                time.sleep(1e-4)
            try:
                work.wait()
            except Exception as err:  # a failed NCCL work raises here
                raise self._broken(what, err) from err

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        # Setup-time tensors live on the CPU; NCCL only reduces device tensors (gloo reduces both).
        move = self.backend == "nccl" and tensor.device != self.device
        work_tensor = tensor.to(self.device) if move else tensor
        what = self._label("all_reduce")
        work = self._start(what, lambda: self.dist.all_reduce(work_tensor, async_op=True))
        self._await(what, [(None, work)], True)
        return work_tensor if work_tensor is tensor else work_tensor.to(tensor.device)

    def exchange(
        self, sends: Mapping[int, Tensor], recv_shapes: Mapping[int, tuple[int, ...]], dtype: torch.dtype
    ) -> dict[int, Tensor]:
        wire = self.wire_device
        received = {q: torch.empty(shape, dtype=dtype, device=wire) for q, shape in recv_shapes.items()}
        ops = p2p_ops(self.dist, self.rank, received, {q: t.to(wire).contiguous() for q, t in sends.items()})
        what = self._label("neighbour exchange")
        if ops:
            self._await(what, self._start(what, lambda: self._batch(ops)), False)
        return {q: buf.to(self.device, non_blocking=True) for q, buf in received.items()}

    def _batch(self, ops: list[tuple[int, Any]]) -> list[tuple[int | None, Any]]:
        """Issue ``ops`` as one batch; the works, each with its peer where the backend gives one
        work per op (gloo), else (NCCL: one work for the whole group) with peer None."""
        works = self.dist.batch_isend_irecv([op for _, op in ops])
        if len(works) == len(ops):
            return [(q, work) for (q, _), work in zip(ops, works)]
        return [(None, work) for work in works]

    def barrier(self) -> None:
        what = self._label("barrier")
        self._await(what, [(None, self._start(what, lambda: self.dist.barrier(async_op=True)))], True)

    def allgather_object(self, obj: Any) -> list[Any]:
        # A polled barrier first: once every rank is present the blocking gather completes.
        self.barrier()
        out: list[Any] = [None] * self.world_size
        what = self._label("allgather_object")
        self._start(what, lambda: self.dist.all_gather_object(out, obj))
        return out

    def gather_object(self, obj: Any, root: int = 0) -> list[Any] | None:
        self.barrier()  # polled, as for allgather_object
        out: list[Any] | None = [None] * self.world_size if self.rank == root else None
        what = self._label("gather_object")
        self._start(what, lambda: self.dist.gather_object(obj, out, dst=root))
        return out

    def close(self) -> None:
        # After a failure a collective may be pending: no final barrier, no teardown under it.
        if not self.dist.is_initialized() or self._failed:
            return
        # gloo work objects still alive at interpreter exit abort the process (SIGABRT,
        # "terminate called without an active exception"): free them, then tear down together.
        gc.collect()
        try:
            self.barrier()
        except CommError as err:
            self.report_failure(err)
            raise
        self.dist.destroy_process_group()


class MpiComm(_ChannelComm):
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
        self._init_failure_handling(timeout_s)
        self.channel = MpiChannel(self.MPI, self.world)
        self._abort_registered = False

    def _wait(self, what: str, requests: list, peers: Sequence[int] = ()) -> None:
        """Wait for ``requests`` (``peers[i]``: the rank request i talks to, where known)."""
        # Spin first, as a blocking MPI call would: a sleep costs ~0.5 ms whatever its argument
        # (timer slack), 50x a 2-rank all-reduce. Only a wait that outlasts the spin (a slow,
        # failed or dead peer) reads the failure channel and backs off to sleeping, so that it
        # does not burn a core until the deadline.
        start = time.monotonic()
        while not self.MPI.Request.Testall(requests):
            now = time.monotonic()
            if now - start < _SPIN_S:
                continue
            self._check_peers(what)
            if now - start > self.timeout_s:
                raise self._timed_out(what, [q for q, r in zip(peers, requests) if not r.Test()])
            time.sleep(1e-4)

    def _host(self, tensor: Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy())

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        send = self._host(tensor)
        recv = np.empty_like(send)
        self._wait(self._label("all_reduce"), [self.world.Iallreduce(send, recv, op=self.MPI.SUM)])
        return torch.from_numpy(recv).to(tensor.device)

    def exchange(
        self, sends: Mapping[int, Tensor], recv_shapes: Mapping[int, tuple[int, ...]], dtype: torch.dtype
    ) -> dict[int, Tensor]:
        what = self._label("neighbour exchange")
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        buffers = {q: np.empty(shape, dtype=np_dtype) for q, shape in recv_shapes.items()}
        send_data = {q: self._host(t) for q, t in sends.items()}
        recvs = [(q, self.world.Irecv(buf, source=q, tag=7)) for q, buf in buffers.items() if buf.size]
        recvs += [(q, self.world.Isend(d, dest=q, tag=7)) for q, d in send_data.items() if d.size]
        if recvs:
            self._wait(what, [r for _, r in recvs], [q for q, _ in recvs])
        return {q: torch.from_numpy(buf).to(self.device) for q, buf in buffers.items()}

    def allgather_object(self, obj: Any) -> list[Any]:
        # A deadline-polled barrier first: once every rank is present the blocking gather completes.
        self.barrier()
        return self.world.allgather(obj)

    def gather_object(self, obj: Any, root: int = 0) -> list[Any] | None:
        self.barrier()  # polled, as for allgather_object
        return self.world.gather(obj, root=root)

    def barrier(self) -> None:
        self._wait(self._label("barrier"), [self.world.Ibarrier()])

    def report_failure(self, err: BaseException) -> None:
        super().report_failure(err)
        if not self._abort_registered:
            # MPI_Finalize at exit would wait on (or abort over) the collective a failed peer
            # never joined. The CLI ends the process itself (failure.end_process); any other
            # caller gets an MPI_Abort after its own report, at interpreter exit.
            self._abort_registered = True
            atexit.register(self._abort_at_exit)

    def _abort_at_exit(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.world.Abort(1)


def resolve_comm(choice: str, env: DistEnv, device: torch.device) -> str:
    """``parallel.comm`` with ``auto`` resolved: mpi4py for CPU ranks that MPI launched, if
    installed, else ``torch``; ``torch``, ``gloo`` and ``mpi`` stay as they are."""
    if choice != "auto":
        return choice
    if env.method is not LaunchMethod.MPI or device.type != "cpu":
        return "torch"
    try:
        import mpi4py  # noqa: F401 - only whether it is installed
    except ImportError:
        return "torch"
    return "mpi"


def open_communicator(env: DistEnv, cfg: ParallelConfig, device: torch.device) -> Communicator:
    comm = resolve_comm(cfg.comm, env, device)
    if comm == "mpi":
        if device.type != "cpu":
            raise CommError("parallel.comm=mpi moves tensors through host memory; use comm: torch (NCCL) on GPUs, "
                            "or comm: gloo for several ranks on one GPU")
        return MpiComm(env, device, cfg.timeout_s)
    return TorchComm(env, device, cfg.timeout_s, backend=torch_backend(comm, device))
