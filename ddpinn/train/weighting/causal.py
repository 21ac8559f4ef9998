"""Causal weights for time-dependent problems (Wang, Sankaran, Perdikaris, CMAME 2024).

Defines :class:`CausalWeights`. The time axis ``loss.causal.axis`` of the domain [t0, t1] is cut
into ``loss.causal.chunks`` equal chunks; a PDE point in chunk i gets the weight
w_i = exp(−ε Σ_{j<i} L_j), L_j the mean squared PDE residual of chunk j, so that later times only
count once the earlier ones are fitted. Combined with the chosen weighting when
``loss.causal.enabled`` (:func:`~ddpinn.train.weighting.make_weighting`); the constraints keep
weight 1 here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ddpinn.train.weighting.base import LossWeighting, WeightingContext

__all__ = ["CausalWeights"]


class CausalWeights(LossWeighting):
    """Per-point PDE weights exp(−ε · the summed losses of the earlier time chunks), no gradient.

    The chunk losses L_j ride in each step's all-reduce (:meth:`diagnostics`), so the weights of
    Adam step s use the chunk losses measured at step s − 1: a one-step lag that keeps one
    all-reduce per step. Before the first step no loss is known and every weight is 1. The global
    point count per chunk takes one all-reduce per point set (:meth:`on_points`). All quantities
    the weights depend on are global, so they are the same on any number of ranks.
    """

    name = "causal"

    def __init__(self, ctx: WeightingContext) -> None:
        super().__init__(ctx)
        self.settings = self.cfg.causal
        self.axis = list(ctx.exp.problem.inputs).index(self.settings.axis)  # an input: checked by build_experiment
        domain = ctx.exp.decomposition.domain
        self.t0, self.t1 = float(domain.lo[self.axis]), float(domain.hi[self.axis])
        self.n_diagnostics = self.settings.chunks
        self._chunk_losses = torch.zeros(self.settings.chunks, dtype=torch.float64, device=ctx.device)
        """L_j of the last step, [chunks], on the device: the step never waits for a host copy."""
        self.chunk_of: Tensor | None = None
        """Chunk of each own PDE point, [n_pde] int64."""
        self.chunk_counts: Tensor | None = None
        """Global PDE points per chunk, [chunks] float64."""
        self._point_weights: Tensor | None = None
        self._one = torch.ones((), dtype=ctx.dtype, device=ctx.device)

    # ---------------------------------------------------------------- the step
    @property
    def chunk_losses(self) -> np.ndarray:
        """L_j of the last step, [chunks] float64 (all zero before the first step); a host copy,
        for logging and checkpoints."""
        return self._chunk_losses.cpu().numpy().copy()

    def chunk_weights(self) -> Tensor:
        """exp(−ε Σ_{j<i} L_j) for each chunk i, [chunks] float64 on the device; chunk 0 always
        has weight 1."""
        losses = self._chunk_losses
        earlier = torch.cat([losses.new_zeros(1), torch.cumsum(losses, 0)[:-1]])
        return torch.exp(-self.settings.epsilon * earlier)

    def weights(self) -> dict[str, Tensor]:
        """PDE: the weight of each own point's chunk, [n_pde]; other terms: 1."""
        return {name: self._point_weights if name == "pde" else self._one for name in self.ctx.names}

    def diagnostics(self, squared: dict[str, Tensor], batch) -> Tensor:
        """Σ_own r² of each chunk / the chunk's global point count, [chunks] (all-reduced: L_j)."""
        sums = squared["pde"].new_zeros(self.settings.chunks).index_add_(0, self.chunk_of, squared["pde"].detach())
        return sums / self.chunk_counts.clamp(min=1).to(sums.dtype)  # an empty chunk has L = 0

    def after_sync(self, step: int, diagnostics: Tensor) -> None:
        """Keep the step's chunk losses for the next step's weights (unless :attr:`frozen`)."""
        if self.frozen:
            return
        self._chunk_losses = diagnostics.detach().to(torch.float64).clone()
        self._update_point_weights()

    # ---------------------------------------------------------------- points and state
    def on_points(self, points, batch) -> None:
        """The chunk of each own PDE point (from its time coordinate in ``batch``) and the global
        count per chunk: one all-reduce, on every rank."""
        t = batch.x[batch.groups["pde"], self.axis].detach().to(torch.float64)
        position = (t - self.t0) / (self.t1 - self.t0) * self.settings.chunks
        self.chunk_of = position.floor().long().clamp(0, self.settings.chunks - 1)  # t = t1 is in the last chunk
        local = torch.bincount(self.chunk_of, minlength=self.settings.chunks).to(torch.float64)
        self.chunk_counts = self.ctx.comm.all_reduce_sum(local)
        self._update_point_weights()

    def global_state(self) -> dict[str, np.ndarray]:
        return {"causal_chunk_losses": self.chunk_losses}

    def load_global_state(self, state: dict[str, np.ndarray]) -> None:
        if "causal_chunk_losses" in state:
            losses = np.asarray(state["causal_chunk_losses"], dtype=np.float64).reshape(-1)
            self._chunk_losses = torch.tensor(losses, dtype=torch.float64, device=self.ctx.device)
            self._update_point_weights()

    def report(self) -> dict[str, float]:
        """``causal_min_weight``: the last chunk's weight; ``causal_front``: the fraction of chunks
        with weight > 0.99 (how far in time training has reached)."""
        chunk = self.chunk_weights().cpu().numpy()
        return {"causal_min_weight": float(chunk.min()), "causal_front": float((chunk > 0.99).mean())}

    def describe(self) -> str:
        s = self.settings
        return f"causal ({s.chunks} chunks along {s.axis}, epsilon {s.epsilon:g})"

    def _update_point_weights(self) -> None:
        if self.chunk_of is None:
            return
        self._point_weights = self.chunk_weights().to(self.ctx.dtype)[self.chunk_of]
