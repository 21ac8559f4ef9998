"""Evaluation batches for one process: its own points, its halo points and the exchange plan.

Defines :class:`BatchFactory`, which the trainer asks for the training batch of a sampling
epoch and for the test batch. On one process this is :func:`~ddpinn.model.batch.build_batch`
over all points; on several, each rank samples its block only, receives the coordinates of its
halo points from the neighbours that own them (once per sampling), and gets an exchange plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpinn.build import Experiment
from ddpinn.jets import JetSpec
from ddpinn.model.batch import EvaluationBatch, build_batch
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["BatchFactory", "TestSet"]


class BatchFactory:
    def __init__(self, exp: Experiment, layout: ParallelLayout, comm: Communicator, device: torch.device) -> None:
        self.exp, self.layout, self.comm, self.device = exp, layout, comm, device
        self.block = layout.block(comm.rank)
        self.held = layout.held(comm.rank)
        self.value_spec = JetSpec.closure(exp.problem.dim, [])

    def _batch(self, groups: dict[str, np.ndarray], spec: JetSpec, data: dict[str, np.ndarray]) -> EvaluationBatch:
        exp = self.exp
        if self.comm.world_size == 1:
            return build_batch(
                exp.problem, exp.decomposition, exp.window, spec, groups, dtype=exp.dtype, device=self.device, data=data
            )
        from ddpinn.parallel.exchange.plan import build_distributed_batch

        return build_distributed_batch(exp, self.layout, self.comm, groups, spec, self.held, self.device, data)

    def training_batch(self, epoch: int) -> EvaluationBatch:
        block = self.block
        return self._batch(self.exp.training_points(epoch, block), self.exp.spec, self.exp.observations(block))

    def test_set(self) -> TestSet:
        """Value-only batch on the own test points, with the exact solution there."""
        x = self.exp.test_points(self.block)
        batch = self._batch({"test": x}, self.value_spec, {})
        exact = self.exp.problem.exact(torch.from_numpy(x))
        if exact is not None:
            exact = exact.reshape(x.shape[0], -1).detach().double()
        return TestSet(batch, exact, x)


@dataclass(frozen=True, eq=False)
class TestSet:
    """The own part of the test grid: ``x`` [n, dim] float64, ``exact`` [n, n_out] float64 or None."""

    batch: EvaluationBatch
    exact: torch.Tensor | None
    x: np.ndarray
