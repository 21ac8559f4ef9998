"""Balanced global term weights from gradient norms (learning-rate annealing; Wang, Teng,
Perdikaris 2021, and the grad-norm form of Wang et al. 2023).

Defines :class:`BalancedWeights`. Every ``loss.balanced.every`` Adam steps (and before the first)
each term's gradient norm g_t = ‖∇_θ L_t‖ of its unweighted loss L_t = Σ_i r_ti² / N_t sets the
target weights λ̂_t = Σ_s g_s / g_t, so that every weighted term pulls on the parameters equally
hard; the weights follow a moving average λ ← α λ + (1 − α) λ̂. Chosen by
``loss.weighting: balanced`` (:func:`~ddpinn.train.weighting.make_weighting`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ddpinn.train.weighting.base import LossWeighting, WeightingContext

__all__ = ["BalancedWeights"]


class BalancedWeights(LossWeighting):
    """One global weight per term, learnt from the terms' gradient norms.

    The weights start at 1 for every term: the problem's hand-set constraint weights (e.g. 1e6 and
    1e2 of P3) are not used, so a run shows what balancing finds on its own. The gradient norms are
    global (all-reduced by the caller), so the weights are the same on every rank and on any number
    of ranks. A term whose gradient norm is 0 (no points, or already exact) keeps its weight.
    """

    name = "balanced"

    def __init__(self, ctx: WeightingContext) -> None:
        super().__init__(ctx)
        self.settings = self.cfg.balanced
        self._set(np.ones(len(ctx.names), dtype=np.float64))

    def _set(self, values: np.ndarray) -> None:
        """λ_t in :attr:`WeightingContext.names` order, [n_terms]; their device tensors are made
        here, when they change, not at every step."""
        self.values = values
        self._tensors = {name: torch.tensor(value, dtype=self.ctx.dtype, device=self.ctx.device)
                         for name, value in zip(self.ctx.names, values)}

    def weights(self) -> dict[str, Tensor]:
        """λ_t as a 0-d tensor per term."""
        return self._tensors

    def before_step(self, step: int, gradient_norms: Callable[[], Tensor]) -> None:
        """At steps 0, every, 2 every, ... (unless :attr:`frozen`): λ ← α λ + (1 − α) λ̂."""
        if self.frozen or step % self.settings.every:
            return
        norms = gradient_norms().detach().to(torch.float64).cpu().numpy()
        if not np.isfinite(norms).all():
            return  # the non-finite loss behind it stops the run at this step's finite check
        target = self.values.copy()
        positive = norms > 0
        target[positive] = norms.sum() / norms[positive]
        alpha = self.settings.momentum
        self._set(alpha * self.values + (1 - alpha) * target)

    def global_state(self) -> dict[str, np.ndarray]:
        return {"balanced_weights": self.values.copy()}

    def load_global_state(self, state: dict[str, np.ndarray]) -> None:
        if "balanced_weights" in state:
            self._set(np.asarray(state["balanced_weights"], dtype=np.float64).reshape(len(self.ctx.names)).copy())

    def report(self) -> dict[str, float]:
        """λ_t by term (``balanced/pde``, ...)."""
        return {f"balanced/{name}": float(v) for name, v in zip(self.ctx.names, self.values)}

    def describe(self) -> str:
        s = self.settings
        return f"balanced (gradient norms every {s.every} steps, momentum {s.momentum:g})"
