"""Self-adaptive weights (McClenny & Braga-Neto, JCP 2023): a trainable weight per point.

Defines :class:`SelfAdaptiveWeights`. Every own point i of every loss term (the PDE residual and
each soft constraint) has a trainable λ_i; its term is Σ_i m(λ_i) r_i² / N, minimised over the
model parameters and *maximised* over λ, so points the model fits badly gain weight. The mask m is
λ² (``square``), softplus(λ), or λ itself (``identity``). Ascent never lowers a λ: for every mask
∂L/∂λ_i = m'(λ_i) r_i² / N ≥ 0 while λ_i ≥ 0, so Adam's moments and steps are ≥ 0 and λ stays at
or above its positive initial value (no clamp needed for ``identity``). The λ live with the points on the
rank that owns them and move with them when points are resampled (:attr:`PointSet.origin`).
Chosen by ``loss.weighting: self_adaptive`` (:func:`~ddpinn.train.weighting.make_weighting`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddpinn.train.weighting.base import LossWeighting, WeightingContext

__all__ = ["SelfAdaptiveWeights"]

_MASKS = {
    "square": torch.square,
    "softplus": F.softplus,
    "identity": lambda lam: lam,
}


@dataclass
class _GroupState:
    """λ of one term's own points and their Adam moments, each [n]."""

    lam: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor


class SelfAdaptiveWeights(LossWeighting):
    """A trainable λ per own point of every term, stepped by Adam ascent after each backward pass.

    The problem's hand-set constraint weights (e.g. 1e6 and 1e2 of P3) are *not* used: every λ
    starts at ``loss.self_adaptive.init`` (λ, before the mask), also for points that resampling
    adds. The ascent is Adam with torch's default betas and eps and ``loss.self_adaptive.lr``; its
    step count is global (kept points and new ones share it), so a new point's first step is not
    bias-corrected like the first step of a run (up to 0.1/√0.001 ≈ 3.2 lr instead of lr).

    dL/dλ_i = m'(λ_i) r_i² / N_t is local to the rank owning point i, so the ascent needs no
    communication and gives the same λ on any number of ranks. :meth:`diagnostics` adds each term's
    global mean and mean square of m(λ) to the step's all-reduce, for :meth:`report`.
    """

    name = "self_adaptive"

    def __init__(self, ctx: WeightingContext) -> None:
        super().__init__(ctx)
        self.settings = self.cfg.self_adaptive
        self.mask = _MASKS[self.settings.mask]
        self.n_diagnostics = 2 * len(ctx.names)
        self.groups: dict[str, _GroupState] = {}
        """The current point set's state, term name -> λ and moments (empty before :meth:`on_points`)."""
        self.optimizer: torch.optim.Adam | None = None
        self._fused = ctx.device.type in ("cpu", "cuda")
        self.ascent_steps = 0
        """Adam ascent steps taken so far (the step count of the moments' bias correction)."""
        self._restored: dict[str, _GroupState] | None = None
        self._moments: Tensor | None = None
        """The last step's all-reduced :meth:`diagnostics`, on the device (read at logging only)."""

    # ---------------------------------------------------------------- the step
    def weights(self) -> dict[str, Tensor]:
        """m(λ) per own point of each term, [n_t], differentiable in λ."""
        if not self.groups:
            raise RuntimeError("SelfAdaptiveWeights.weights() before on_points(): the weights belong to points")
        return {name: self.mask(self.groups[name].lam) for name in self.ctx.names}

    def diagnostics(self, squared: dict[str, Tensor], batch) -> Tensor:
        """Per term: Σ_own m(λ_i) / N_t and Σ_own m(λ_i)² / N_t, [2 n_terms] (all-reduced: the
        global mean and mean square of the weights)."""
        out = []
        for name in self.ctx.names:
            w, count = self.mask(self.groups[name].lam.detach()), batch.global_counts[name]
            out += [w.sum() / count, w.square().sum() / count] if count else [w.new_zeros(()), w.new_zeros(())]
        return torch.stack(out)

    def after_backward(self, step: int) -> None:
        """One Adam ascent step on every λ (unless :attr:`frozen`); their gradients are then cleared."""
        if not self.frozen:
            self.optimizer.step()
            self.ascent_steps += 1
        for state in self.groups.values():
            state.lam.grad = None

    def after_sync(self, step: int, diagnostics: Tensor) -> None:
        self._moments = diagnostics.detach()

    # ---------------------------------------------------------------- points and state
    def on_points(self, points, batch) -> None:
        """λ and moments of the new point set: a kept point carries its own (from the current set,
        or from the rows given to :meth:`load_point_state`), a new point starts at ``init`` with
        zero moments. A new Adam optimiser takes the carried moments and the global step count."""
        previous = self._restored if self._restored is not None else self._current_state()
        self._restored = None
        self.groups = {}
        for name in self.ctx.names:
            n = points.groups[name].shape[0]
            self.groups[name] = self._carry(previous.get(name), points.kept_from(name), n)
        # Fused: the step count stays on the device (the plain kernel reads it back every step).
        self.optimizer = torch.optim.Adam([g.lam for g in self.groups.values()], lr=self.settings.lr, maximize=True,
                                          fused=self._fused)
        self._set_optimizer_state()

    def point_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Per term: ``sa_lambda``, ``sa_adam_m``, ``sa_adam_v``, each [n_t] float64, rows of the
        term's points."""
        return {
            name: {
                "sa_lambda": _numpy(g.lam),
                "sa_adam_m": _numpy(g.exp_avg),
                "sa_adam_v": _numpy(g.exp_avg_sq),
            }
            for name, g in self._current_state().items()
        }

    def load_point_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """The checkpoint's rows of this rank's previous points; the next :meth:`on_points` takes
        its kept points' state from them. A term without stored λ (the run used another weighting)
        starts afresh."""
        self._restored = {
            name: _GroupState(*(self._tensor(fields[k]) for k in ("sa_lambda", "sa_adam_m", "sa_adam_v")))
            for name, fields in state.items()
            if "sa_lambda" in fields
        }

    def global_state(self) -> dict[str, np.ndarray]:
        return {"sa_adam_step": np.array([self.ascent_steps], dtype=np.int64)}

    def load_global_state(self, state: dict[str, np.ndarray]) -> None:
        if "sa_adam_step" in state:
            self.ascent_steps = int(np.asarray(state["sa_adam_step"]).reshape(-1)[0])
            self._set_optimizer_state()

    def parameters(self) -> list[Tensor]:
        return [g.lam for g in self.groups.values()]

    def report(self) -> dict[str, float]:
        """Global mean and standard deviation of m(λ) per term at the last step (``sa_mean/pde``, ...);
        nothing before the first step."""
        out = {}
        if self._moments is None:
            return out
        moments = self._moments.to(torch.float64).cpu().tolist()
        for t, name in enumerate(self.ctx.names):
            mean, mean_square = moments[2 * t : 2 * t + 2]
            out[f"sa_mean/{name}"] = mean
            out[f"sa_std/{name}"] = max(mean_square - mean * mean, 0.0) ** 0.5
        return out

    def describe(self) -> str:
        s = self.settings
        return f"self-adaptive (mask {s.mask}, lr {s.lr:g}, init {s.init:g})"

    # ---------------------------------------------------------------- helpers
    def _tensor(self, values) -> Tensor:
        return torch.as_tensor(np.asarray(values), dtype=self.ctx.dtype, device=self.ctx.device)

    def _carry(self, previous: _GroupState | None, kept_from: np.ndarray, n: int) -> _GroupState:
        """State of ``n`` points, row i taken from ``previous`` row ``kept_from[i]`` (-1: new)."""
        lam = torch.full((n,), self.settings.init, dtype=self.ctx.dtype, device=self.ctx.device)
        exp_avg, exp_avg_sq = torch.zeros_like(lam), torch.zeros_like(lam)
        if previous is not None and n:
            kept_from = torch.as_tensor(kept_from, device=self.ctx.device)
            kept = kept_from >= 0
            rows = kept_from[kept]
            lam[kept], exp_avg[kept], exp_avg_sq[kept] = previous.lam[rows], previous.exp_avg[rows], previous.exp_avg_sq[rows]
        return _GroupState(lam.requires_grad_(), exp_avg, exp_avg_sq)

    def _current_state(self) -> dict[str, _GroupState]:
        """The live state, the moments read from the optimiser (where Adam updates them)."""
        out = {}
        for name, g in self.groups.items():
            adam = self.optimizer.state[g.lam]
            out[name] = _GroupState(g.lam.detach(), adam["exp_avg"], adam["exp_avg_sq"])
        return out

    def _set_optimizer_state(self) -> None:
        """Hand the moments and the global step count to the optimiser (torch.optim.Adam's layout)."""
        if self.optimizer is None:
            return
        for g in self.groups.values():
            self.optimizer.state[g.lam] = {
                "step": torch.tensor(float(self.ascent_steps), dtype=torch.float32,
                                     device=g.lam.device if self._fused else "cpu"),
                "exp_avg": g.exp_avg,
                "exp_avg_sq": g.exp_avg_sq,
            }


def _numpy(values: Tensor) -> np.ndarray:
    return values.detach().cpu().to(torch.float64).numpy()
