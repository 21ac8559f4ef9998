"""Process-level performance settings and decisions, applied explicitly (never on import).

Defines the CPU thread default (:func:`default_threads`, applied by :func:`set_threads` from
the session), the allocator setting (:func:`tune_cpu_allocator`), the machine-speed probe of
the benchmarks (:func:`machine_probe_ms`, :func:`machine`), and the decision whether
``torch.compile`` pays back for a run (:func:`decide_compile`, with its inputs: the cold compile
time model :func:`cold_compile_estimate` and the per-cache record :class:`CompileRecord`), used
by the trainer for ``train.compile: auto``. The pure functions here import nothing heavy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "available_cores", "default_threads", "set_threads", "tune_cpu_allocator", "machine_probe_ms", "machine",
    "CompileDecision", "decide_compile", "contention", "cold_compile_estimate", "CompileRecord",
    "COMPILED_STEP_RATIO", "CompileSettings", "compile_settings",
]

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


# ---------------------------------------------------------------------------------- threads
def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, cpusets, SLURM's binding)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(*, configured: int | None, omp_num_threads: str | None, cores: int, local_ranks: int) -> int:
    """Intra-op threads per process: ``run.threads`` if set, else ``OMP_NUM_THREADS`` (what
    cluster job scripts set), else the node's cores *less one* shared among its ranks, at least 1.

    Why one core is left out: an OpenMP team meets at a barrier after every parallel operation,
    hundreds of times per step. When another process holds one of the team's cores, every
    barrier waits for a descheduled thread, and the step collapses: on this 2-core machine P4
    L=4 went from 13.5 to 214 ms/step eager, a user problem from 114 to 4 steps/s. A team one
    core smaller than the machine keeps running at its own pace; alone it gives up 1/cores of the
    machine (on 2 cores: one thread, about 1.4x slower per step at best, never 25x).
    """
    if configured:
        return configured
    if omp_num_threads and omp_num_threads.strip().isdigit() and int(omp_num_threads) > 0:
        return int(omp_num_threads)
    return max(1, (cores - 1) // max(local_ranks, 1))


def set_threads(threads: int | None, local_world_size: int) -> int:
    """Apply :func:`default_threads` to torch (intra-op threads) and return the count."""
    import torch

    n = default_threads(
        configured=threads,
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        cores=available_cores(),
        local_ranks=local_world_size,
    )
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------------------------- machine speed
PROBE_SIZE = 384
PROBE_REPEATS = 7


def machine_probe_ms() -> float:
    """Milliseconds for a fixed float32 workload on one thread, best of 7: 8 matrix products of
    384x384 and a tanh over the result, the kinds of work a training step does. Benchmarks divide
    their ms per step by it, so that figures from days when this VM ran faster or slower compare."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen)
        b = torch.randn(8, PROBE_SIZE, PROBE_SIZE, generator=gen)
        best = float("inf")
        for _ in range(PROBE_REPEATS):
            t0 = time.perf_counter()
            torch.tanh(torch.matmul(a, b)).sum().item()
            best = min(best, time.perf_counter() - t0)
        return 1e3 * best
    finally:
        torch.set_num_threads(threads)


def machine() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and the cores this process may use."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not model:
        import platform

        model = platform.processor() or platform.machine()
    return f"{model}, {available_cores()} cores"


# ---------------------------------------------------------------------------------- compile
COMPILED_STEP_RATIO = 0.5
"""Expected compiled / eager time per step on one thread (this project's 2-core CPU,
``benchmarks/speed.py``: P1 2.07 / 3.83 ms = 0.54, P4 L=4 5.05 / 13.0 ms = 0.39)."""

# Cold compile of a step that runs n forward operators: measured 14.4 s (P1, 85 operators) and
# 39.3 s (P4 L=4, 239) on this project's 2-core CPU with nothing else running, i.e. ~1 s + 0.16 s
# per operator. The model adds a margin (a busy machine compiles 2-3x slower: P4 L=4 took 94 s
# at a load average of 6); an over-estimate only keeps a short run eager.
_COLD_SECONDS_BASE = 5.0
_COLD_SECONDS_PER_OP = 0.2
# A compile that hits torch's cache (FX graph and AOTAutograd caches) took 3.6-7 s for the same steps.
_WARM_FRACTION = 0.15


@dataclass(frozen=True)
class CompileDecision:
    """Whether ``torch.compile`` pays back over the steps left, and the figures it rests on."""

    compile: bool
    compile_s: float
    """Expected compile time, seconds."""
    saving_s: float
    """Expected time saved by the compiled step over the steps left, seconds (before compiling)."""
    cached: bool
    """Whether ``compile_s`` assumes torch's compile cache already holds this step."""

    def describe(self) -> str:
        where = "warm compile cache" if self.cached else "cold compile cache"
        if self.compile:
            return (f"compiling the training step: ~{self.compile_s:.0f} s to compile ({where}) saves "
                    f"~{self.saving_s:.0f} s over the steps left")
        return (f"training eager: compiling would take ~{self.compile_s:.0f} s ({where}) and save only "
                f"~{self.saving_s:.0f} s over the steps left (train.compile: on forces it)")


def decide_compile(*, compile_s: float, steps_left: int, eager_ms: float, compiled_ms: float,
                   cached: bool = False) -> CompileDecision:
    """Compile when the expected saving over ``steps_left`` steps, ``steps_left * (eager_ms -
    compiled_ms)`` (ms per step), exceeds the expected compile time ``compile_s`` (seconds)."""
    saving = max(steps_left, 0) * (eager_ms - compiled_ms) / 1e3
    return CompileDecision(compile=saving > compile_s, compile_s=compile_s, saving_s=saving, cached=cached)


def contention(wall_s: float, cpu_s: float, threads: int) -> float:
    """How many times slower than alone this process runs: wall time over CPU time per thread
    for the same stretch of work (1 when each thread has its own core; 4 when it gets a quarter
    of one, as beside 7 busy processes on 2 cores). A compile run now would be slowed alike."""
    if cpu_s <= 0 or wall_s <= 0:
        return 1.0
    return max(1.0, wall_s * max(threads, 1) / cpu_s)


def cold_compile_estimate(n_ops: int) -> float:
    """Seconds to compile a training step of ``n_ops`` operators (its forward, as traced) with an
    empty compile cache: a fixed cost (compiler start, headers) plus a cost per operator (the
    generated C++ kernels of the forward and backward); P4 L=4 (239 operators): 53 s."""
    return _COLD_SECONDS_BASE + _COLD_SECONDS_PER_OP * n_ops


def graph_fingerprint(op_names: list[str], shapes: list[tuple[int, ...]], torch_version: str) -> str:
    """A key for one traced step: the operators it ran, in order, the input shapes and the torch
    version (what torch's own compile cache keys on, approximately)."""
    text = json.dumps([torch_version, op_names, shapes])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class CompileRecord:
    """Compile times measured earlier for each step fingerprint, kept beside torch's compile cache
    (``<cache dir>/ddpinn_compile_times.json``), so that a compile cache that holds a step is known
    to be warm and a fresh one cold. Entries: fingerprint -> {"cold_s": float, "warm_s": float?}."""

    path: Path
    entries: dict[str, dict[str, float]]

    @classmethod
    def load(cls, cache_dir: str | Path) -> CompileRecord:
        path = Path(cache_dir) / "ddpinn_compile_times.json"
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def estimate(self, fingerprint: str, n_ops: int) -> tuple[float, bool]:
        """Expected compile seconds and whether the cache is taken to hold this step: the last
        warm compile, else a fraction of the cold one recorded, else the cold model."""
        entry: Mapping[str, float] = self.entries.get(fingerprint, {})
        if "warm_s" in entry:
            return entry["warm_s"], True
        if "cold_s" in entry:
            return _WARM_FRACTION * entry["cold_s"], True
        return cold_compile_estimate(n_ops), False

    def store(self, fingerprint: str, seconds: float, cached: bool) -> None:
        """Record a measured compile (best effort: an unwritable cache directory is skipped)."""
        self.entries.setdefault(fingerprint, {})["warm_s" if cached else "cold_s"] = seconds
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries, indent=1))
            tmp.replace(self.path)
        except OSError:
            pass


@dataclass(frozen=True)
class CompileSettings:
    """The arguments of ``torch.compile`` for the training step."""

    mode: str
    """torch.compile's ``mode``."""
    dynamic: bool | None
    """torch.compile's ``dynamic``: True compiles for any batch size, False specialises on the
    first one, None lets torch decide (static first, dynamic after a change)."""


def compile_settings(device_type: str, changing_shapes: bool) -> CompileSettings:
    """How to compile the training step on ``device_type`` (``"cpu"``, ``"cuda"``, ...).

    Never CUDA graphs (modes ``reduce-overhead`` and ``max-autotune``): a graph replays recorded
    kernels, so the neighbour exchange inside the step (host-side waits, NCCL calls, gloo's copies
    through host memory) cannot be captured, and every new batch size would record a new graph
    and hold its memory. The ``default`` mode uses none. Autotuning (``max-autotune-no-cudagraphs``)
    is left out too: the step's matrix products are many small stacked ones, where a search over
    kernel configurations adds minutes of compile for little (the compile-or-not decision counts
    on compile times near the default mode's).

    ``dynamic``: points that change size during the run (``changing_shapes``) compile for any
    size at once (one recompile at the first change instead of one per size). Fixed points on
    CUDA specialise on their size (``False``): shapes known to the compiler give the GPU kernels
    fixed launch grids and no size guards. CPU keeps torch's default (None), as measured by
    ``benchmarks/speed.py``.
    """
    if changing_shapes:
        return CompileSettings(mode="default", dynamic=True)
    return CompileSettings(mode="default", dynamic=False if device_type == "cuda" else None)


class TracedOps:
    """Counts the operators one call runs (a torch dispatch mode) and fingerprints them."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []

    def run(self, fn: Callable, *args):
        """``fn(*args)``, counting the operators it runs."""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        names, shapes = self.names, self.shapes

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, f_args=(), kwargs=None):
                out = func(*f_args, **(kwargs or {}))
                names.append(str(func))
                if isinstance(out, torch.Tensor):
                    shapes.append(tuple(out.shape))
                return out

        with _Count():
            return fn(*args)

    def fingerprint(self) -> str:
        import torch

        return graph_fingerprint(self.names, self.shapes, torch.__version__)


class StepFunction:
    """``local_terms(*args)`` as ``train.compile`` says: ``off`` eager; ``on`` compiled from the
    first call; ``auto`` eager for the first ``probe_calls`` calls, which time the eager step
    (call to call: forward, backward and optimiser), then compiled from there on if
    :func:`decide_compile` says it pays back over the steps left. A failing ``torch.compile``
    falls back to eager.

    The trainer reads :attr:`compiling` after a step (the call that compiled), reports the
    compile with :meth:`compiled_in`, and records :attr:`mode` in the summary.
    """

    def __init__(self, eager: Callable, *, mode: str, total_steps: int, gather: Callable[[object], list],
                 message: Callable[[str], None], probe_calls: int = 30, changing_shapes: bool = False,
                 device_type: str = "cpu") -> None:
        """``eager``: the uncompiled ``local_terms``; ``gather(obj)``: every rank's ``obj``
        (a collective: all ranks decide alike); ``message(text)``: a progress line.
        ``changing_shapes``: the batch changes size during the run (resampled or adaptive points):
        the step is compiled with dynamic shapes, which costs one more compile at the first
        change (measured: RAD on P6, events 1 and 3 each recompiled with static shapes, ~40 s
        each; with dynamic shapes only event 1), and the decision counts that compile too.
        ``device_type``: where the step runs (:func:`compile_settings`)."""
        self.eager, self.total_steps, self.gather, self.message = eager, total_steps, gather, message
        self.changing_shapes = changing_shapes
        self.settings = compile_settings(device_type, changing_shapes)
        self.probe_calls = probe_calls if mode == "auto" else 0
        self.mode = "eager"
        """How the step runs: "eager", "compiled", or "eager (torch.compile failed)"."""
        self.compiling = False
        """True after the call that compiled (or tried to), until the trainer has reported it."""
        self._fn = self.eager if mode == "off" else None
        self._calls = 0
        self._call_times: list[float] = []
        self._cpu_times: list[float] = []
        self._trace: TracedOps | None = None
        self._cached = False
        self._record: CompileRecord | None = None

    def __call__(self, *args):
        if self._fn is not None:
            return self._fn(*args)
        self._calls += 1
        if self._calls <= self.probe_calls:
            self._call_times.append(time.perf_counter())
            self._cpu_times.append(time.process_time())
            if self._calls == 2:  # the first call builds lazily; trace a settled one
                self._trace = TracedOps()
                return self._trace.run(self.eager, *args)
            return self.eager(*args)
        if self.probe_calls and not self._decide():
            self._fn = self.eager
            return self.eager(*args)
        return self._compile(*args)

    def _decide(self) -> bool:
        import torch
        import torch._inductor.runtime.cache_dir_utils as inductor_cache

        intervals = [b - a for a, b in zip(self._call_times[2:], self._call_times[3:])]
        eager_ms = 1e3 * statistics.median(intervals)
        self._record = CompileRecord.load(inductor_cache.cache_dir())
        compile_s, self._cached = self._record.estimate(self._trace.fingerprint(), len(self._trace.names))
        if self.changing_shapes:
            compile_s *= 2  # the recompile at the first change of the points
        # On a busy machine the eager steps were slowed, and a compile would be slowed alike.
        busy = contention(self._call_times[-1] - self._call_times[2], self._cpu_times[-1] - self._cpu_times[2],
                          torch.get_num_threads())
        slowest = self.gather((eager_ms, compile_s * busy))
        eager_ms, compile_s = max(s[0] for s in slowest), max(s[1] for s in slowest)
        decision = decide_compile(
            compile_s=compile_s, steps_left=self.total_steps - self._calls + 1, eager_ms=eager_ms,
            compiled_ms=COMPILED_STEP_RATIO * eager_ms, cached=self._cached,
        )
        self.message(decision.describe())
        return decision.compile

    def _compile(self, *args):
        import torch

        self.compiling = True
        compiled = torch.compile(self.eager, mode=self.settings.mode, dynamic=self.settings.dynamic)
        try:
            out = compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            self.message(f"torch.compile failed ({type(err).__name__}: {err}); continuing in eager mode")
            self.mode, self._fn = "eager (torch.compile failed)", self.eager
            return self.eager(*args)
        self.mode, self._fn = "compiled", compiled
        return out

    def compiled_in(self, seconds: float) -> None:
        """Report the compile measured by the trainer (the whole step's time that compiled, or
        tried to), recorded for the next run's estimate."""
        self.compiling = False
        if self.mode == "compiled" and self._record is not None and self._trace is not None:
            self._record.store(self._trace.fingerprint(), seconds, self._cached)
