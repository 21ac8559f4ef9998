"""Memory of training on one rank, predicted from the rank's counts before anything is allocated.

Defines :class:`MemoryEstimate` (bytes by part, and which parts dominate) and
:func:`estimate_rank_memory`, used by ``ddpinn check --device-memory`` (with the analytic counts
of :mod:`ddpinn.parallel.workload`) and by the trainer's ``summary.json`` (with the counts of
the batch it built, :func:`batch_counts`); also :func:`peak_memory_bytes`, the measured figure
the summary sets beside the prediction.

The model. A training step evaluates every (point, subdomain) pair of the rank on a padded
``[rows, ..., slot]`` layout (:mod:`ddpinn.geometry.coverage`), so its memory is, per level, slots
times bytes per slot, plus arrays over points, plus the parameters:

* **batch** — per slot the normalised input ``x_norm`` (dim values), the window product
  ``window_product`` (J² values) and ``point_index`` (int64); per own point x, the hard-constraint
  product (J²·n_out) and shift (J·n_out).
* **activations** — what autograd keeps from the forward pass for the backward pass, counted
  from :meth:`StackedMLP.jets <ddpinn.model.mlp.StackedMLP.jets>`: the first hidden layer keeps
  σ(z)…σ^(m)(z) ((m+1)·H₁ values; its jets are folded into the next layer's weights), every
  further hidden layer keeps its input jets, σ^(k) of its value row, the Faà di Bruno products
  and the composed jets ((J + m + 1 + c)·H, c the spec's chain-rule intermediates), and the
  network output (J·n_out) is kept by the window product. With Fourier features (f frequencies)
  the 2f features are the folded input layer and the first hidden layer takes the generic path;
  trained frequencies add θ (f values). Every level's are alive at once (the backward pass starts
  after the last level's forward).
* **step transient** — the gradients and temporaries of the level the backward pass is in: the
  window-product broadcast (J²·n_out) and about one more set of the level's activations; only
  the largest level's count, since levels are differentiated one after another. On CPU a
  fraction of every level's temporaries stays resident (:data:`RESIDENT_TRANSIENT`), and a
  value-only level's take more than their count there (:data:`CPU_VALUE_ONLY_HEAP`).
* **points** — the per-point partial sums ``[n_eval, J, n_out]`` (two alive while levels are
  added), the constrained jets and the residual arrays.
* **parameters+optimizer** — parameter, gradient and Adam's two moments (and L-BFGS's history
  pairs when ``lbfgs.steps`` > 0).
* **batch build (host)** — the batch is built on the host in float64 ([pairs, J, J] products,
  window jets, pair indices), one level at a time; on CPU this memory is freed but stays
  resident (glibc keeps freed heap, :func:`ddpinn.perf.tune_cpu_allocator`), so the process peak
  adds it. It never reaches a GPU.
* **test set** — the value-only (J = 1) batches of the own test points and one evaluation's
  temporaries.
* **baseline** — the interpreter, torch and ddpinn's imports and a built trainer (measured:
  see :data:`CPU_BASELINE_BYTES`); under CUDA the context and allocator reserve instead.

With finite differences (``model.derivatives: fd``) the networks evaluate the stencil points of
the own points value-only (:class:`~ddpinn.parallel.workload.EvaluatedRows`): every per-slot and
per-row count above is taken with J = 1 over the counts' pairs and rows (the stencil points), and
the own points add the stencil's map (``[n, J, K]`` int64 rows and weights in the batch) and its
application to the final u (:func:`stencil_values`), the only place the J jets appear.

The structural counts are exact for what autograd keeps (tests/test_memory_model.py checks them
against the saved tensors); the allocator's share (:data:`RESIDENT_TRANSIENT`) and the constants
were measured on CPU for the shipped networks (``benchmarks/memory_model.py``).
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from ddpinn.jets import JetSpec
from ddpinn.model.fourier import FourierFeatures
from ddpinn.parallel.workload import EvaluatedRows

__all__ = [
    "MemoryEstimate", "RankCounts", "BatchCounts", "estimate_rank_memory", "batch_counts", "peak_memory_bytes",
    "memory_summary", "saved_values_per_slot", "CPU_BASELINE_BYTES", "CUDA_CONTEXT_BYTES",
]

MiB = 1 << 20

CPU_BASELINE_BYTES = 312 * MiB
"""Resident memory of a built trainer before its batch (one process, torch 2.13 CPU): the
interpreter, torch, ddpinn and h5py imports. Measured by ``benchmarks/memory_model.py --probe``
(311.6 to 314.9 MiB on P3, P4 L = 3..7 and Burgers)."""

CPU_COMPILER_BYTES = 120 * MiB
"""What compiling the step takes on CPU at its peak (importing torch._dynamo and inductor, tracing,
code generation), measured on P4 L = 5 (123 MiB over the batch, eager 38 MiB). It is freed
before the compiled step runs, and the step reuses it: P4 L = 6 compiled took 179 MiB over the
batch, eager 163 MiB. So a compiled run adds what the step does not cover of it."""

CUDA_CONTEXT_BYTES = 500 * MiB
"""Assumed (no GPU was available to measure it): the CUDA context and cuBLAS workspace, which
``torch.cuda.max_memory_allocated`` does not count but the device does."""

CUDA_ALLOCATOR_FACTOR = 1.10
"""Assumed: the caching allocator rounds blocks up (512 B, 2 MiB segments) and keeps freed
blocks for reuse; 10% on top of the tensors for the device total."""

SLOTS_PER_PAIR = 1.07
"""Padding of the row layout: slots / pairs measured on P4 L = 5..7 (1.051 to 1.066), rounded
up. Used when the counts are analytic (pairs only)."""

RESIDENT_TRANSIENT = {"cpu": 0.15, "cuda": 0.0}
"""Share of a level's step temporaries that stays resident after the level, on top of the
largest level's: freed blocks that the next levels' differently sized tensors cannot reuse.
CPU: fitted to the step memory measured on P4 L = 3, 5, 6, 7 (0.09 to 0.23, and below 0 at
L = 3); the caching allocator of CUDA reuses blocks by size class (assumed 0)."""

CPU_VALUE_ONLY_HEAP = 4.0
"""Resident bytes of a value-only level's step temporaries (the slots of ``model.derivatives:
fd``) on CPU over their count (:func:`transient_values_per_slot`). The count is the tensors'
(the profiler's peak of live tensors of one [2, 16, 1] level: 136 B per slot, counted 140), but
a value-only layer frees several [S, H, P] temporaries per unit (the pre-activation, 2z and σ(2z)
for tanh, then the backward's gradients and 1 - t²) which glibc keeps and the next, differently
sized, tensors do not reuse. Measured on P4 L = 3 under fd (``benchmarks/memory_model.py
--probe``, 0.5M-2.1M slots): the step's resident set grows by about 221 B per slot, which a
transient of about 4x its count reproduces (292 B against 72 counted); a [2, 16, 1] level alone
keeps 320-384 B per slot, 68 saved and 3.5-4.4x the count. Jets' temporaries are not scaled:
their fitted :data:`RESIDENT_TRANSIENT` covers them."""

BUILD_ALLOCATOR_FACTOR = 1.0
"""Measured resident bytes of building the batch over its structural count (CPU only)."""


class RankCounts(Protocol):
    """What the estimate needs to know about a rank: :class:`ddpinn.parallel.workload.RankWorkload`
    (analytic) or :class:`BatchCounts` (from a built batch). Level keys are 0-based indices.
    ``own_rows``: rows evaluated for the own points (their stencil points with finite
    differences); ``halo_points``: halo rows; pairs count evaluated rows."""

    own_points: Mapping[str, int]
    own_rows: int
    halo_points: int
    pairs_by_level: Mapping[int, int]
    parameters: int


@dataclass(frozen=True)
class BatchCounts:
    """:class:`RankCounts` read off a built training batch and model (the trainer's summary)."""

    own_points: dict[str, int]
    own_rows: int
    halo_points: int
    pairs_by_level: dict[int, int]
    parameters: int


def batch_counts(batch, model: torch.nn.Module) -> BatchCounts:
    """The counts of ``batch`` (an :class:`~ddpinn.model.batch.EvaluationBatch`) and ``model``;
    with finite differences the own points' stencil points are own rows, not halo."""
    return BatchCounts(
        own_points={name: rows.stop - rows.start for name, rows in batch.groups.items()},
        own_rows=batch.n_own_rows,
        halo_points=batch.n_eval - batch.n_own_rows,
        pairs_by_level={l: int(cov.n_pairs) for l, cov in enumerate(batch.levels)},
        parameters=sum(p.numel() for p in model.parameters()),
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one rank: ``by_part`` name -> bytes (see the module docstring).

    ``device_kind``: ``cpu`` (the process's resident set, comparable with ru_maxrss) or ``cuda``
    (device memory: tensors through the caching allocator plus the context)."""

    by_part: dict[str, int]
    device_kind: str

    @property
    def total_bytes(self) -> int:
        return sum(self.by_part.values())

    @property
    def tensor_bytes(self) -> int:
        """Everything but the baseline: comparable with ``torch.cuda.max_memory_allocated``."""
        return self.total_bytes - self.by_part.get("baseline", 0)

    def dominant(self, n: int = 3) -> list[tuple[str, int]]:
        """The ``n`` largest parts, largest first."""
        return sorted(self.by_part.items(), key=lambda kv: -kv[1])[:n]

    def describe(self, n: int = 3) -> str:
        """E.g. ``1.62 GiB: activations level 7 0.41 GiB (25%), batch 0.33 GiB (20%), ...``."""
        total = max(self.total_bytes, 1)
        parts = ", ".join(f"{name} {_gib(b)} ({100 * b / total:.0f}%)" for name, b in self.dominant(n))
        return f"{_gib(self.total_bytes)} on {self.device_kind}: {parts}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / MiB:.0f} MiB"


# ---------------------------------------------------------------------------------- structural counts
def chain_intermediates(spec: JetSpec) -> int:
    """Products of the Faà di Bruno terms that autograd keeps per hidden unit: a term
    σ^(k)·z_a·z_b… multiplies its factors one by one, and every product but the last is saved."""
    return sum(max(len(t.block_rows) - 1, 0) for terms in spec.chain for t in terms)


def saved_values_per_slot(sizes: tuple[int, ...], spec: JetSpec, fourier: FourierFeatures | None = None) -> int:
    """Values autograd keeps between the forward and the backward pass, per slot of one level
    evaluated by :meth:`StackedMLP.jets <ddpinn.model.mlp.StackedMLP.jets>` with layer sizes
    ``sizes`` (``[dim, hidden..., n_out]``) and Fourier features ``fourier``, including the network
    output the window product keeps; not the input x_norm, which the batch holds anyway.

    Input layer of U units (the first hidden layer, or the 2f Fourier features): σ(z)…σ^(m)(z).
    Further hidden layers (H): the input jets' value row derivatives σ^(k) (m+1), the chain-rule
    products (c), the composed jets fed to the next product (J); each layer's output jets
    (J·next width) are its successor's input. Trained Fourier frequencies add θ (f values)."""
    units = ([fourier.width] if fourier is not None else []) + list(sizes[1:-1])
    next_widths = units[1:] + [sizes[-1]]
    jets, order = len(spec), spec.max_order
    theta = fourier.features if fourier is not None and fourier.trainable else 0
    if jets == 1:  # values only: each layer keeps its input for the next product
        return theta + sum(units) + sizes[-1]
    values = theta + (order + 1) * units[0] + jets * next_widths[0]
    c = chain_intermediates(spec)
    for width, next_width in zip(units[1:], next_widths[1:]):
        values += (order + 1 + c + jets) * width + jets * next_width
    return values


def transient_values_per_slot(sizes: tuple[int, ...], spec: JetSpec, fourier: FourierFeatures | None = None) -> int:
    """Temporaries per slot of the level the backward pass is in: the window product's
    broadcast ([J, J, n_out]) and gradients about as large as the level's saved values."""
    return len(spec) ** 2 * sizes[-1] + saved_values_per_slot(sizes, spec, fourier)


def point_values(spec: JetSpec, n_out: int) -> int:
    """Values per evaluated point in a step: two partial-sum arrays [J·n_out] while levels are
    added, the hard-constraint broadcast [J²·n_out], constrained jets, residuals and gradients."""
    jets = len(spec)
    return jets * jets * n_out + 6 * jets * n_out


def stencil_values(spec: JetSpec, width: int, n_out: int) -> int:
    """Values per own point of differencing u with a stencil of ``width`` entries per jet row
    (:meth:`Stencil.apply <ddpinn.model.finite_difference.Stencil.apply>`; 0 without one): the
    gathered values and their weighted products [J, K, n_out] and the gradient of one of them,
    the jets [J, n_out], the residuals and their gradients. Counted, not measured: it is small
    beside the slots (P4: 5 x 4 entries per point against ~25 slots per point)."""
    return 3 * len(spec) * width * n_out + 4 * len(spec) * n_out if width else 0


def stencil_bytes_per_point(spec: JetSpec, width: int, dtype_bytes: int) -> int:
    """The stencil's map in the batch: int64 rows and weights in the run dtype, [J, K] each."""
    return len(spec) * width * (8 + dtype_bytes)


def batch_bytes_per_slot(dim: int, jets: int, dtype_bytes: int) -> int:
    """x_norm [dim], window_product [J, J] in the run dtype, point_index int64."""
    return (dim + jets * jets) * dtype_bytes + 8


def build_bytes_per_pair(dim: int, jets: int, dtype_bytes: int) -> int:
    """Host temporaries of :func:`~ddpinn.geometry.cover_level` per pair of the level being
    built: the float64 product matrices [J, J] and their cast, five float64 jet arrays [J]
    (window, total, inverse, ŵ and its gather), four [dim] coordinate arrays and about ten int64
    index arrays (pairs, their order, rows, slots)."""
    return jets * jets * (8 + dtype_bytes) + 5 * jets * 8 + 4 * dim * 8 + 10 * 8


# ---------------------------------------------------------------------------------- the estimate
def estimate_rank_memory(exp, workload: RankCounts, device_kind: str = "cpu", *,
                         compiled: bool | None = None) -> MemoryEstimate:
    """Predicted peak memory of the rank whose counts are ``workload`` in the run ``exp``
    (an :class:`~ddpinn.build.Experiment`).

    ``device_kind``: ``cpu`` or ``cuda`` (a device index is ignored: ``cuda:1``).
    ``compiled``: the step runs through torch.compile (the compiler's memory on top); None: as
    ``train.compile`` says, counting ``auto`` as compiled (the larger figure).
    The rank's share of the test grid is taken as its share of the collocation (``pde``) points.
    """
    kind = device_kind.split(":")[0]
    if compiled is None:
        compiled = exp.cfg.train.compile != "off"
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device_kind: {device_kind!r} is not cpu or cuda")
    evaluated, dim = EvaluatedRows.of(exp), exp.problem.dim
    spec = evaluated.spec  # per slot and evaluated row: the value only with finite differences
    n_out = len(exp.problem.outputs)
    size = torch.empty((), dtype=exp.dtype).element_size()
    jets = len(spec)
    n_own = sum(int(v) for v in workload.own_points.values())
    own_rows = int(workload.own_rows)
    n_eval = own_rows + int(workload.halo_points)
    slots = {l: SLOTS_PER_PAIR * int(p) for l, p in workload.pairs_by_level.items()}

    parts: dict[str, float] = {}
    state = 4 * workload.parameters * size  # parameter, gradient, Adam's two moments
    if exp.cfg.lbfgs.steps:
        state += (2 * exp.cfg.lbfgs.history + 4) * workload.parameters * size
    parts["parameters+optimizer"] = state
    parts["batch"] = (sum(slots.values()) * batch_bytes_per_slot(dim, jets, size)
                      + n_own * (dim * size + stencil_bytes_per_point(exp.spec, evaluated.stencil_width, size))
                      + own_rows * (jets * jets * n_out + jets * n_out) * size)

    resident = RESIDENT_TRANSIENT[kind]
    heap = CPU_VALUE_ONLY_HEAP if kind == "cpu" and jets == 1 else 1.0
    largest_transient = 0.0
    for l, n_slots in slots.items():
        sizes = exp.level_sizes[l]
        level_transient = heap * n_slots * transient_values_per_slot(sizes, spec, exp.fourier) * size
        saved = saved_values_per_slot(sizes, spec, exp.fourier)
        parts[f"activations level {l + 1}"] = n_slots * saved * size + resident * level_transient
        largest_transient = max(largest_transient, level_transient)
    parts["step transient"] = ((1 - resident) * largest_transient + n_eval * point_values(spec, n_out) * size
                               + n_own * stencil_values(exp.spec, evaluated.stencil_width, n_out) * size)

    test_pairs, test_transient, test_build = _test_set(exp, workload, n_own, own_rows, size)
    parts["test set"] = test_pairs + test_transient

    if kind == "cpu":
        largest = max((int(p) for p in workload.pairs_by_level.values()), default=0)
        parts["batch build (host)"] = BUILD_ALLOCATOR_FACTOR * (
            largest * build_bytes_per_pair(dim, jets, size) + test_build
        )
        if compiled:
            step = sum(v for k, v in parts.items() if k.startswith(("activations", "step", "parameters")))
            parts["compiler"] = max(0.0, CPU_COMPILER_BYTES - step)
        parts["baseline"] = CPU_BASELINE_BYTES
    else:
        tensors = sum(parts.values())
        parts["allocator reserve"] = (CUDA_ALLOCATOR_FACTOR - 1) * tensors
        parts["baseline"] = CUDA_CONTEXT_BYTES
    return MemoryEstimate({k: int(round(v)) for k, v in parts.items()}, kind)


def _test_set(exp, workload: RankCounts, n_own: int, own_rows: int, size: int) -> tuple[float, float, float]:
    """(resident test batches, one chunk's evaluation temporaries, one chunk's host build), bytes.

    The rank's test points are its share of the grid (own / all collocation points); their pairs per
    level follow the training pairs per evaluated own row at the test grid's density (test points
    are evaluated value-only at themselves, never through a stencil). The chunk batches stay resident
    when they fit :data:`~ddpinn.parallel.batching.TEST_CACHE_BYTES`, else one chunk at a time."""
    from ddpinn.parallel.batching import TEST_CACHE_BYTES

    if n_own == 0:
        return 0.0, 0.0, 0.0
    dim, n_out = exp.problem.dim, len(exp.problem.outputs)
    grid_points = math.prod(exp.test_shape())
    share = workload.own_points.get("pde", n_own) / max(exp.collocation_count, 1)
    test_points = grid_points * min(share, 1.0)
    density = test_points / own_rows
    value_spec = JetSpec.closure(dim, [])
    test_slots = {l: SLOTS_PER_PAIR * int(p) * density for l, p in workload.pairs_by_level.items()}
    per_point = (dim + 2 * n_out) * size
    all_bytes = sum(test_slots.values()) * batch_bytes_per_slot(dim, 1, size) + test_points * per_point
    chunk_share = min(1.0, exp.cfg.sampling.test_chunk / test_points)
    resident = all_bytes if all_bytes <= TEST_CACHE_BYTES else chunk_share * all_bytes
    evaluation = chunk_share * max(
        (n * 2 * saved_values_per_slot(exp.level_sizes[l], value_spec, exp.fourier) * size for l, n in test_slots.items()),
        default=0.0,
    )
    build = chunk_share * max(test_slots.values(), default=0.0) / SLOTS_PER_PAIR * build_bytes_per_pair(dim, 1, size)
    return resident, evaluation, build


def peak_memory_bytes(device: torch.device | str = "cpu") -> tuple[int, str]:
    """This process's measured peak and what was measured: on CUDA the tensors' peak through the
    caching allocator (``torch.cuda.max_memory_allocated``: no context, no cached-free blocks);
    elsewhere the peak resident set (``ru_maxrss``: everything, the interpreter included)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"  # bytes on macOS, KiB on Linux


def memory_summary(exp, batch, model: torch.nn.Module, comm, device: torch.device, *, compiled: bool) -> dict:
    """``summary.json``'s memory fields: every rank's measured peak (:func:`peak_memory_bytes`)
    beside the prediction for its batch, in MiB, the largest and per rank. The prediction is the
    figure the measurement counts: the process total on CPU, the tensors on CUDA. One small
    object per rank through ``comm.allgather_object`` (a collective)."""
    measured, what = peak_memory_bytes(device)
    estimate = estimate_rank_memory(exp, batch_counts(batch, model), device.type, compiled=compiled)
    predicted = estimate.total_bytes if device.type == "cpu" else estimate.tensor_bytes
    per_rank = comm.allgather_object((measured / MiB, predicted / MiB))
    return {
        "peak_memory_mb": max(m for m, _ in per_rank),
        "peak_memory_mb_per_rank": [m for m, _ in per_rank],
        "predicted_memory_mb": max(p for _, p in per_rank),
        "predicted_memory_mb_per_rank": [p for _, p in per_rank],
        "memory_measure": what,
    }
