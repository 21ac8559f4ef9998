"""One evaluation of the training loss and its gradients, the same for every optimiser phase.

Defines :class:`LossEngine`: the model's forward pass on a batch, the per-point squared
residuals, the weighted terms, the backward pass and the step's single all-reduce (replicated
gradients, loss terms and the weighting's diagnostics in one buffer), with the weighting's hooks
around them. It also scores points for adaptive sampling and gives each term's gradient norm,
both from the same forward pass as training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.sync import GradientSync
from ddpinn.perf import StepFunction
from ddpinn.train.objective import Objective
from ddpinn.train.weighting import LossWeighting

__all__ = ["LossEngine", "Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """The global loss terms of one evaluation ([n_terms], in :attr:`Objective.names` order) and
    the global gradient norm when it was asked for (clipping), else None."""

    terms: Tensor
    grad_norm: Tensor | None


class LossEngine:
    def __init__(self, model: FBPINN, objective: Objective, weighting: LossWeighting, sync: GradientSync,
                 step_function: StepFunction) -> None:
        """``step_function``: wraps :meth:`local_outputs` (eager or compiled)."""
        self.model, self.objective, self.weighting, self.sync = model, objective, weighting, sync
        self.local = step_function
        self.n_terms = len(objective.names)

    def local_outputs(self, batch: EvaluationBatch, weights: dict[str, Tensor]) -> Tensor:
        """This process's weighted terms, then the weighting's diagnostics: [n_terms + n_diag].
        The function that :class:`~ddpinn.perf.StepFunction` compiles."""
        squared = self.objective.squared_residuals(self.model(batch), batch)
        terms = self.objective.terms(squared, weights, batch)
        return torch.cat([terms, self.weighting.diagnostics(squared, batch).detach().to(terms.dtype)])

    def zero_grad(self) -> None:
        for p in [*self.sync.params, *self.weighting.parameters()]:
            p.grad = None

    def loss_and_gradients(self, batch: EvaluationBatch, step: int, *, with_norm: bool = False) -> Evaluation:
        """Gradients of the global loss in ``.grad`` (replicated ones all-reduced) and the global
        terms; the weighting sees the step (``after_backward``, ``after_sync``)."""
        self.zero_grad()
        out = self.local(batch, self.weighting.weights())
        loss = out[: self.n_terms].sum()
        if loss.requires_grad:  # else no parameter of this rank meets its points this schedule phase
            loss.backward()
        self.weighting.after_backward(step)
        synced = self.sync.reduce(out.detach(), with_norm=with_norm)
        self.weighting.after_sync(step, synced.terms[self.n_terms :])
        return Evaluation(synced.terms[: self.n_terms], synced.grad_norm)

    def term_gradient_norms(self, batch: EvaluationBatch) -> Tensor:
        """‖∇_θ L_t‖ over all ranks for each term with weight 1 (L_t = Σ_i r_ti² / N_t): [n_terms].
        One backward pass and one all-reduce per term; leaves no gradients behind."""
        unit = {name: torch.ones((), dtype=batch.x.dtype, device=batch.x.device) for name in self.objective.names}
        squared = self.objective.squared_residuals(self.model(batch), batch)
        terms = self.objective.terms(squared, unit, batch)
        norms = []
        for t in range(self.n_terms):
            self.zero_grad()
            terms[t].backward(retain_graph=t + 1 < self.n_terms)
            norms.append(self.sync.reduce(terms.new_zeros(0), with_norm=True).grad_norm)
        self.zero_grad()
        return torch.stack(norms).detach()

    @torch.no_grad()
    def terms(self, batch: EvaluationBatch) -> Tensor:
        """The global weighted terms at the current parameters, no gradients: [n_terms]."""
        out = self.local_outputs(batch, self.weighting.weights())
        return self.sync.comm.all_reduce_sum(out[: self.n_terms].contiguous())

    @torch.no_grad()
    def residual_norms(self, batch: EvaluationBatch) -> dict[str, np.ndarray]:
        """|r| of each term at the batch's own points (the norm over a system's components):
        name -> [n_t] float64. A collective (the forward pass exchanges halo values)."""
        squared = self.objective.squared_residuals(self.model(batch), batch)
        return {name: sq.double().sqrt().cpu().numpy() for name, sq in squared.items()}
