"""The training objective: the PDE residual and the soft constraints as weighted loss terms.

Defines :class:`Objective`. Each term is ``weight · Σ_own r² / N_global``: a process sums over
its own points and divides by the global point count, so the loss is the all-reduced sum of the
processes' terms and each process's gradient is its exact share.
"""

from __future__ import annotations

from torch import Tensor
import torch

from ddpinn.jets import JetSpec
from ddpinn.model.batch import EvaluationBatch
from ddpinn.problems.base import Derivatives, Problem

__all__ = ["Objective"]


def _sum_of_squares(residual: Tensor | tuple[Tensor, ...]) -> Tensor:
    parts = residual if isinstance(residual, (tuple, list)) else (residual,)
    return sum((r * r).sum() for r in parts)


class Objective:
    """Loss terms of ``problem``: ``pde`` then one per soft constraint, in :attr:`names` order."""

    def __init__(self, problem: Problem, spec: JetSpec) -> None:
        self.problem = problem
        self.constraints = {c.name: c for c in problem.constraints()}
        self.names = ["pde", *self.constraints]
        self.derivative_names = problem.derivative_names(spec)

    def terms(self, u: Tensor, batch: EvaluationBatch) -> Tensor:
        """Local contributions to each term: [n_terms]. ``u``: [n_own, J, n_out] jets at own points."""
        out = []
        for name in self.names:
            rows = batch.groups[name]
            count = batch.global_counts[name]
            if rows.stop == rows.start or count == 0:
                out.append(u.new_zeros(()))
                continue
            x, d = batch.x[rows], Derivatives(u[rows], self.derivative_names, batch.data.get(name))
            if name == "pde":
                residual, weight = self.problem.residual(x, d), 1.0
            else:
                constraint = self.constraints[name]
                residual, weight = constraint.residual(x, d), constraint.weight
            out.append(_sum_of_squares(residual) * (weight / count))
        return torch.stack(out)
