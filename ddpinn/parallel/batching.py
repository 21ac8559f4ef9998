"""Evaluation batches for one process: its own points, its halo points and the exchange plan.

Defines :class:`BatchFactory`, which turns a rank's own points (per loss term) into an
evaluation batch: the rank receives the coordinates of its halo points from the neighbours that
own them (once per point set) and gets an exchange plan. One process is the same path with no
neighbours and an empty plan. The trainer asks it for training batches, for batches of scoring
candidates (adaptive sampling) and for the test batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpinn.build import Experiment
from ddpinn.jets import JetSpec
from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["BatchFactory", "TestSet"]


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
        """Value-only batch on the own test points, with the exact solution there."""
        x = self.exp.test_points(self.block)
        batch = self.batch({"test": x}, self.value_spec)
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
