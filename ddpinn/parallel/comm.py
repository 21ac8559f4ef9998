"""Communicators: the only objects that move data between processes.

Defines the :class:`Communicator` interface (all-reduce, neighbour exchange, object
collectives) and :class:`LocalComm`, the world of one process. The multi-process
implementations live in :mod:`ddpinn.parallel.backends`. Every collective there has a timeout,
so a dead peer becomes an error instead of a hang, and a peer that raised is noticed within a
poll interval (:mod:`ddpinn.parallel.failure`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Communicator", "LocalComm", "CommError"]


class CommError(RuntimeError):
    """A collective failed or timed out (a peer died, raised, or is stuck)."""


class Communicator(ABC):
    """Collectives over the ranks ``0..world_size-1`` of one job."""

    rank: int = 0
    world_size: int = 1
    name: str = "local"

    @abstractmethod
    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Element-wise sum over ranks; returns the reduced tensor (same shape, dtype, device)."""

    @abstractmethod
    def exchange(
        self, sends: Mapping[int, Tensor], recv_shapes: Mapping[int, tuple[int, ...]], dtype: torch.dtype
    ) -> dict[int, Tensor]:
        """Point-to-point exchange with neighbours: send ``sends[q]`` to rank q and receive a
        ``dtype`` tensor of ``recv_shapes[q]`` from each rank q. Both sides of every pair must
        list each other (zero-size entries are allowed and send nothing)."""

    @abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (setup and checkpoint only)."""

    def gather_object(self, obj: Any, root: int = 0) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on ``root`` only (None on the others): what
        streams results to rank 0 without every rank receiving everything. This default goes
        through :meth:`allgather_object`; the multi-process communicators gather to ``root``."""
        gathered = self.allgather_object(obj)
        return gathered if self.rank == root else None

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.allgather_object(obj)[root]

    def barrier(self) -> None:
        self.all_reduce_sum(torch.zeros(1))

    def report_failure(self, err: BaseException) -> None:
        """This rank stops because of ``err``: tell the other ranks (so they stop too instead of
        waiting for this one) and note on ``err`` how this rank reports and ends
        (:func:`ddpinn.parallel.failure.note_ending`). Called by the session; never raises.
        One process has nobody to tell."""

    def close(self) -> None:
        """Release the process group (idempotent)."""


class LocalComm(Communicator):
    """One process: every collective is the identity."""

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def exchange(self, sends, recv_shapes, dtype):
        if sends or recv_shapes:
            raise CommError("LocalComm has no neighbours to exchange with")
        return {}

    def allgather_object(self, obj):
        return [obj]

    def gather_object(self, obj, root=0):
        return [obj]
