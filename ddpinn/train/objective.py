"""The training objective: the PDE residual and the soft constraints as weighted loss terms.

Defines :class:`Objective`. Each term is ``Σ_own w_i r_i² / N_global``, the weights w given by
the run's :class:`~ddpinn.train.weighting.LossWeighting` (a number per term or one per point): a
process sums over its own points and divides by the global point count, so the loss is the
all-reduced sum of the processes' terms and each process's gradient is its exact share. The
per-point squared residuals behind the terms serve training, adaptive sampling and diagnostics.
"""

from __future__ import annotations

from torch import Tensor
import torch

from ddpinn.jets import JetSpec
from ddpinn.model.batch import EvaluationBatch
from ddpinn.problems.base import Derivatives, Problem

__all__ = ["Objective"]


def _squared_norm(residual: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Per-point squared residual, summed over the residual's components: [n]."""
    parts = residual if isinstance(residual, (tuple, list)) else (residual,)
    return sum(r.reshape(r.shape[0], -1).square().sum(dim=1) for r in parts)


class Objective:
    """Loss terms of ``problem``: ``pde`` then one per soft constraint, in :attr:`names` order."""

    def __init__(self, problem: Problem, spec: JetSpec) -> None:
        self.problem = problem
        self.constraints = {c.name: c for c in problem.constraints()}
        self.names = ["pde", *self.constraints]
        self.derivative_names = problem.derivative_names(spec)

    def base_weights(self) -> dict[str, float]:
        """The problem's hand-set weight of each term (1 for ``pde``)."""
        return {name: 1.0 if name == "pde" else self.constraints[name].weight for name in self.names}

    def squared_residuals(self, u: Tensor, batch: EvaluationBatch) -> dict[str, Tensor]:
        """Each term's squared residual at this process's own points of that term, unweighted:
        name -> [n_own_points_of_term], for the terms whose points the batch holds (a batch of
        candidate points for adaptive sampling holds only ``pde``). ``u``: [n_own, J, n_out]
        jets at own points."""
        out = {}
        for name in self.names:
            if name not in batch.groups:
                continue
            rows = batch.groups[name]
            if rows.stop == rows.start:  # a rank may hold none of a term's points: user code never sees empty input
                out[name] = u.new_zeros((0,))
                continue
            x, d = batch.x[rows], Derivatives(u[rows], self.derivative_names, batch.data.get(name))
            residual = self.problem.residual(x, d) if name == "pde" else self.constraints[name].residual(x, d)
            out[name] = _squared_norm(residual)
        return out

    def terms(self, squared: dict[str, Tensor], weights: dict[str, Tensor], batch: EvaluationBatch) -> Tensor:
        """Local contributions to each term, ``Σ_own w_i r_i² / N_global``: [n_terms].
        ``squared``: from :meth:`squared_residuals`; ``weights[name]``: 0-d or [n_own_points_of_term]."""
        out = []
        for name in self.names:
            sq, count = squared[name], batch.global_counts[name]
            out.append((sq * weights[name]).sum() / count if count and sq.numel() else sq.new_zeros(()))
        return torch.stack(out)
