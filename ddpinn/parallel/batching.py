"""Evaluation batches for one process: its own points, its halo points and the exchange plan.

Defines :class:`BatchFactory`, which turns a rank's own points (per loss term) into an
evaluation batch: the rank receives the coordinates of its halo points from the neighbours that
own them (once per point set) and gets an exchange plan. One process is the same path with no
neighbours and an empty plan. The trainer asks it for training batches, for batches of scoring
candidates (adaptive sampling) and for the test set.

Also defines :class:`TestSet`: the own part of the regular test grid in chunks of at most
``sampling.test_chunk`` points, each evaluated through its own value-only batch, so that the
memory of an evaluation does not grow with the grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddpinn.build import Experiment
from ddpinn.jets import JetSpec
from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.grid_chunks import GridBox, RegularGrid, split_box
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["BatchFactory", "TestSet", "TestChunk", "TEST_CACHE_BYTES", "batch_nbytes"]

TEST_CACHE_BYTES = 1 << 30
"""The test set keeps its chunk batches between evaluations when they take at most this many
bytes on every rank (estimated from the first chunk); beyond it each evaluation builds them
anew, one at a time. Measured on P4 L=7 (CPU, float32, one process): a 65,536-point chunk's
value-only batch takes ~510 bytes per point and builds in 1.1-2.5 s, 2-5x its forward pass
(0.5-1.0 s), so keeping the batches makes every evaluation after the first 3-6x faster; 1 GiB
keeps ~2M test points per rank at L=7 (the default 350x350 grid takes 60 MiB), a budget of the
order of the training batch (L=7, 102,400 points: 282 MiB), while a grid far beyond it is
rebuilt rather than held."""


class BatchFactory:
    def __init__(self, exp: Experiment, layout: ParallelLayout, comm: Communicator, device: torch.device) -> None:
        self.exp, self.layout, self.comm, self.device = exp, layout, comm, device
        self.block = layout.block(comm.rank)
        self.held = layout.held(comm.rank)
        self.value_spec = JetSpec.closure(exp.problem.dim, [])

    def batch(self, groups: dict[str, np.ndarray], spec: JetSpec | None = None,
              data: dict[str, np.ndarray] | None = None) -> EvaluationBatch:
        """The batch of own points ``groups`` (name -> [n, dim] float64), with jets ``spec`` (the
        problem's by default) and observed values ``data`` (name -> [n, k]). A collective."""
        from ddpinn.parallel.exchange.plan import build_distributed_batch

        return build_distributed_batch(
            self.exp, self.layout, self.comm, groups, spec or self.exp.spec, self.held, self.device, data or {}
        )

    def training_batch(self, groups: dict[str, np.ndarray]) -> EvaluationBatch:
        """The training batch of the own points ``groups``, with the observations in the block."""
        return self.batch(groups, data=self.exp.observations(self.block))

    def test_set(self) -> TestSet:
        """The own test points in chunks of at most ``sampling.test_chunk``, with the exact
        solution there. No communication: every rank counts every rank's chunks from the blocks,
        and pads its own list with empty chunks to the largest count."""
        exp, chunk = self.exp, self.exp.cfg.sampling.test_chunk
        grid = RegularGrid.of(exp.decomposition.domain, exp.test_shape())
        own = split_box(grid.owned_box(self.block), chunk)
        rounds = max(len(split_box(grid.owned_box(self.layout.block(q)), chunk)) for q in range(self.comm.world_size))
        first = grid.points(GridBox((0,) * len(grid.shape), (1,) * len(grid.shape)))
        has_exact = exp.problem.exact(torch.from_numpy(first)) is not None
        n_out = len(exp.problem.outputs)
        chunks = [TestChunk.on(grid, box, exp.problem, has_exact, n_out) for box in own]
        empty = GridBox((0,) * len(grid.shape), (0,) * len(grid.shape))
        chunks += [TestChunk.on(grid, empty, exp.problem, has_exact, n_out)] * (rounds - len(own))
        return TestSet(self, grid, chunks, has_exact)

    def test_batch(self, x: np.ndarray) -> EvaluationBatch:
        """The value-only batch of own test points ``x`` [n, dim] (n may be 0). A collective."""
        return self.batch({"test": x}, self.value_spec)


@dataclass(frozen=True, eq=False)
class TestChunk:
    """One chunk of the own test points: the grid indices ``box``, its points ``x`` [n, dim]
    float64 in C order, and ``exact`` [n, n_out] float64 (None without an exact solution)."""

    box: GridBox
    x: np.ndarray
    exact: torch.Tensor | None

    @classmethod
    def on(cls, grid: RegularGrid, box: GridBox, problem, has_exact: bool, n_out: int) -> TestChunk:
        x = grid.points(box)
        exact = None
        if has_exact:
            exact = torch.zeros(0, n_out, dtype=torch.float64)
            if x.shape[0]:  # an empty chunk does not ask the problem about no points
                exact = problem.exact(torch.from_numpy(x)).reshape(x.shape[0], -1).detach().double()
        return cls(box, x, exact)


class TestSet:
    """The own part of the test grid in chunks, the same number on every rank (trailing ones
    empty where a rank owns fewer). Iterating :meth:`batches` is a collective: every rank must
    go through all of them, in order.

    The chunk batches are built at the first pass; whether they are kept for the next ones is
    decided then, the same on every rank (one all-reduce): kept when the estimate of their size
    (first chunk's bytes per point × own points) is within :data:`TEST_CACHE_BYTES` on every rank.
    """

    def __init__(self, factory: BatchFactory, grid: RegularGrid, chunks: list[TestChunk], has_exact: bool) -> None:
        self.factory, self.grid, self.chunks, self.has_exact = factory, grid, chunks, has_exact
        self.cached: list[EvaluationBatch] | None = None
        self.caches: bool | None = None
        """Whether the chunk batches are kept between evaluations (None until the first pass)."""

    @property
    def device(self) -> torch.device:
        return self.factory.device

    @property
    def n_points(self) -> int:
        return sum(c.x.shape[0] for c in self.chunks)

    def batches(self) -> Iterator[tuple[TestChunk, EvaluationBatch]]:
        """Each chunk with its batch, built now or kept from the first pass. A collective."""
        if self.cached is not None:
            yield from zip(self.chunks, self.cached)
            return
        kept = []
        for chunk in self.chunks:
            batch = self.factory.test_batch(chunk.x)
            if self.caches is None:
                self.caches = self._decide_caching(batch, chunk)
            if self.caches:
                kept.append(batch)
            yield chunk, batch
        if self.caches:
            self.cached = kept

    def _decide_caching(self, first: EvaluationBatch, chunk: TestChunk) -> bool:
        per_point = batch_nbytes(first) / max(chunk.x.shape[0], 1)
        over = float(per_point * self.n_points > TEST_CACHE_BYTES)
        return self.factory.comm.all_reduce_sum(torch.tensor([over], dtype=torch.float64)).item() == 0


def batch_nbytes(value) -> int:
    """Bytes of the tensors in ``value``, an :class:`EvaluationBatch` (through its coverages,
    exchange plan and dicts)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(batch_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(batch_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(batch_nbytes(v) for v in value)
    return 0
