"""The weighting interface, the fixed weights, and the product of several weightings.

The trainer's step calls, in order: :meth:`LossWeighting.before_step` (may ask for each term's
global gradient norm), :meth:`weights` (tensors entering the loss; may require grad),
:meth:`diagnostics` inside the step function (local scalars that ride in the step's all-reduce),
:meth:`after_backward` (e.g. the ascent on self-adaptive weights), :meth:`after_sync` (with the
all-reduced diagnostics). During L-BFGS the weights are frozen (:attr:`frozen`): a line search
needs one fixed loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddpinn.parallel.comm import Communicator

__all__ = ["LossWeighting", "WeightingContext", "FixedWeights", "ProductWeighting"]


@dataclass(frozen=True, eq=False)
class WeightingContext:
    """What a weighting may use. ``names``: the loss terms (``pde`` first); ``base``: the
    problem's hand-set weight per term (1 for ``pde``); ``exp``: the Experiment (config,
    problem, domain); ``comm``: for the global reductions a strategy needs."""

    names: list[str]
    base: dict[str, float]
    exp: object
    comm: Communicator
    device: torch.device
    dtype: torch.dtype


class LossWeighting:
    """Fixed weights by default; subclasses override the hooks they need."""

    name = "fixed"
    n_diagnostics = 0
    """Local scalars :meth:`diagnostics` adds to the step's all-reduce."""

    def __init__(self, ctx: WeightingContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.exp.cfg.loss
        self.frozen = False
        """Set by the L-BFGS phase: the weights then stay as they are."""
        # Built once: the fixed weights enter every step.
        self._base_tensors = {name: torch.tensor(ctx.base[name], dtype=ctx.dtype, device=ctx.device)
                              for name in ctx.names}

    # ---------------------------------------------------------------- the step
    def weights(self) -> dict[str, Tensor]:
        """Term name -> weight, a 0-d tensor or one per own point of that term ([n_t])."""
        return self._base_tensors

    def diagnostics(self, squared: dict[str, Tensor], batch) -> Tensor:
        """Local contributions to global scalars (detached), from each term's unweighted squared
        residuals at own points (name -> [n_t]): [n_diagnostics]. Runs inside the step function."""
        return next(iter(squared.values())).new_zeros((0,))

    def before_step(self, step: int, gradient_norms: Callable[[], Tensor]) -> None:
        """Before Adam step ``step``; ``gradient_norms()`` returns each term's global gradient
        norm, [n_terms] (a collective with a backward pass per term: call it rarely)."""

    def after_backward(self, step: int) -> None:
        """After the backward pass of Adam step ``step``, before the parameters are updated."""

    def after_sync(self, step: int, diagnostics: Tensor) -> None:
        """With the all-reduced :meth:`diagnostics` of the step just taken: [n_diagnostics]."""

    # ---------------------------------------------------------------- points and state
    def on_points(self, points, batch) -> None:
        """A new point set (start, resampling or restore) and its batch; per-point state follows
        ``points.origin``."""

    def point_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Per-point state to checkpoint: group -> field -> [n_group, ...] rows, aligned with the
        group's points."""
        return {}

    def load_point_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Per-point state restored from a checkpoint (rows of this rank's points); called
        before :meth:`on_points` with the restored point set."""

    def global_state(self) -> dict[str, np.ndarray]:
        """Replicated state to checkpoint: name -> array."""
        return {}

    def load_global_state(self, state: dict[str, np.ndarray]) -> None:
        """Replicated state restored from a checkpoint."""

    def parameters(self) -> list[Tensor]:
        """Tensors trained by this weighting (not by the model's optimiser)."""
        return []

    def report(self) -> dict[str, float]:
        """Values worth logging (e.g. current term weights), name -> number."""
        return {}

    def describe(self) -> str:
        return self.name


class FixedWeights(LossWeighting):
    """The problem's hand-set constraint weights (1 for the PDE residual)."""


class ProductWeighting(LossWeighting):
    """Several weightings at once (e.g. self-adaptive and causal): weights multiply, each
    hook goes to every part, diagnostics are concatenated."""

    def __init__(self, ctx: WeightingContext, parts: Sequence[LossWeighting]) -> None:
        super().__init__(ctx)
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        self.n_diagnostics = sum(p.n_diagnostics for p in self.parts)

    @property
    def frozen(self) -> bool:
        return self.parts[0].frozen if getattr(self, "parts", None) else False

    @frozen.setter
    def frozen(self, value: bool) -> None:
        for p in getattr(self, "parts", []):
            p.frozen = value

    def weights(self) -> dict[str, Tensor]:
        out = self.parts[0].weights()
        for part in self.parts[1:]:
            other = part.weights()
            out = {name: out[name] * other[name] for name in out}
        return out

    def diagnostics(self, squared, batch) -> Tensor:
        return torch.cat([p.diagnostics(squared, batch) for p in self.parts])

    def before_step(self, step, gradient_norms) -> None:
        for p in self.parts:
            p.before_step(step, gradient_norms)

    def after_backward(self, step) -> None:
        for p in self.parts:
            p.after_backward(step)

    def after_sync(self, step, diagnostics) -> None:
        offset = 0
        for p in self.parts:
            p.after_sync(step, diagnostics[offset : offset + p.n_diagnostics])
            offset += p.n_diagnostics

    def on_points(self, points, batch) -> None:
        for p in self.parts:
            p.on_points(points, batch)

    def point_state(self):
        out: dict[str, dict[str, np.ndarray]] = {}
        for p in self.parts:
            for group, fields in p.point_state().items():
                out.setdefault(group, {}).update(fields)
        return out

    def load_point_state(self, state) -> None:
        for p in self.parts:
            p.load_point_state(state)

    def global_state(self):
        return {k: v for p in self.parts for k, v in p.global_state().items()}

    def load_global_state(self, state) -> None:
        for p in self.parts:
            p.load_global_state(state)

    def parameters(self):
        return [t for p in self.parts for t in p.parameters()]

    def report(self):
        return {k: v for p in self.parts for k, v in p.report().items()}

    def describe(self) -> str:
        return " x ".join(p.describe() for p in self.parts)
