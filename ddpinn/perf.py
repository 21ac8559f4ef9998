"""Process-level performance settings, applied explicitly by the session (never on import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

__all__ = ["tune_cpu_allocator", "set_threads"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_cpu_allocator() -> bool:
    """Keep freed CPU tensor memory in glibc's heap instead of returning it to the OS.

    A training step allocates and frees the same multi-megabyte tensors every step; by default
    glibc serves those with fresh mmap'd pages, and the page faults cost ~25% of a step here
    (P4 L=5: 20 ms -> 15 ms). Returns False where glibc's mallopt is unavailable.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False


def set_threads(threads: int | None, local_world_size: int) -> int:
    """Intra-op threads: as configured, else ``OMP_NUM_THREADS`` (what cluster job scripts set),
    else the machine's cores shared among the local ranks (ranks on one node must not each take
    every core: oversubscribed OpenMP threads spin against each other)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    n = threads or (int(env) if env.isdigit() and int(env) > 0 else 0)
    n = n or max(1, (os.cpu_count() or 1) // max(local_world_size, 1))
    torch.set_num_threads(n)
    return n
