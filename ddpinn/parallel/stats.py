"""Communication accounting: a communicator wrapper that counts bytes and seconds per operation.

Defines :class:`CommStats` and :class:`InstrumentedComm`. Used by ``benchmarks/step_profile.py``
to report, per rank and step, the time spent in the halo exchange and the all-reduce and the
bytes each sends, next to the analytic halo volume.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ddpinn.parallel.comm import Communicator

__all__ = ["CommStats", "InstrumentedComm"]


@dataclass
class CommStats:
    """Totals since the last :meth:`reset`: calls, seconds and bytes sent, per operation kind."""

    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def reset(self) -> None:
        self.calls.clear()
        self.seconds.clear()
        self.bytes_sent.clear()

    def add(self, kind: str, seconds: float, nbytes: int) -> None:
        self.calls[kind] += 1
        self.seconds[kind] += seconds
        self.bytes_sent[kind] += nbytes

    def as_dict(self) -> dict[str, Any]:
        return {k: {"calls": self.calls[k], "seconds": self.seconds[k], "bytes": self.bytes_sent[k]} for k in self.calls}


class InstrumentedComm(Communicator):
    """Wraps a communicator; every call is timed (with a device sync) and its payload counted."""

    def __init__(self, inner: Communicator) -> None:
        self.inner = inner
        self.rank, self.world_size, self.name = inner.rank, inner.world_size, f"instrumented({inner.name})"
        self.stats = CommStats()

    def _sync(self, tensor: Tensor | None) -> None:
        if tensor is not None and tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        self._sync(tensor)
        t0 = time.perf_counter()
        out = self.inner.all_reduce_sum(tensor)
        self._sync(out)
        self.stats.add("all_reduce", time.perf_counter() - t0, tensor.numel() * tensor.element_size())
        return out

    def exchange(self, sends: Mapping[int, Tensor], recv_shapes, dtype: torch.dtype) -> dict[int, Tensor]:
        first = next(iter(sends.values()), None)
        self._sync(first)
        t0 = time.perf_counter()
        out = self.inner.exchange(sends, recv_shapes, dtype)
        self._sync(next(iter(out.values()), None))
        nbytes = sum(t.numel() * t.element_size() for t in sends.values())
        self.stats.add("exchange", time.perf_counter() - t0, nbytes)
        return out

    def allgather_object(self, obj: Any) -> list[Any]:
        t0 = time.perf_counter()
        out = self.inner.allgather_object(obj)
        self.stats.add("allgather_object", time.perf_counter() - t0, 0)
        return out

    def gather_object(self, obj: Any, root: int = 0) -> list[Any] | None:
        t0 = time.perf_counter()
        out = self.inner.gather_object(obj, root)
        self.stats.add("gather_object", time.perf_counter() - t0, 0)
        return out

    def barrier(self) -> None:
        self.inner.barrier()

    def close(self) -> None:
        self.inner.close()
