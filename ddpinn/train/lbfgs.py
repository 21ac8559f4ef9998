"""Limited-memory BFGS with a backtracking (Armijo) line search, written against an abstract
inner product so that distributed runs use global dot products.

A parameter "vector" is a mapping from parameter name to tensor (``"level_1/W0"``,
``"problem/mu"``: the names the checkpoint stores them under), holding every parameter this
process holds. ``dot(a, b)`` must return the global inner product: on one process a plain sum,
on several the sum over partitioned parameters all-reduced plus the replicated ones counted
once. :func:`dot_by_name` adapts an inner product over tensor lists (``GradientSync.dot``).
Used by the trainer; the checkpoint saves and restores :class:`LBFGSState`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LBFGS", "CorrectionPair", "LBFGSState", "Vector", "dot_by_name"]

Vector = dict[str, Tensor]
"""Parameter name -> tensor shaped like that parameter."""


@dataclass
class CorrectionPair:
    """One L-BFGS correction: the parameter step ``s`` and the gradient change ``y``, by name."""

    s: Vector
    y: Vector


@dataclass
class LBFGSState:
    """Correction pairs, oldest first; the checkpoint stores them like the parameters."""

    pairs: list[CorrectionPair] = field(default_factory=list)


def dot_by_name(
    dot: Callable[[Sequence[Tensor], Sequence[Tensor]], float], order: Sequence[Tensor], params: Mapping[str, Tensor]
) -> Callable[[Vector, Vector], float]:
    """``dot`` over tensor lists laid out like ``order`` (e.g. ``GradientSync.dot`` over
    ``GradientSync.params``) as an inner product of name-keyed vectors. Names are matched to
    ``order`` by tensor identity, so the two lists may be built in any order."""
    name_of = {id(p): name for name, p in params.items()}
    missing = [i for i, p in enumerate(order) if id(p) not in name_of]
    if missing or len(order) != len(params):
        raise ValueError(f"dot_by_name: {len(order)} tensors, {len(params)} named; unnamed positions {missing}")
    names = [name_of[id(p)] for p in order]
    return lambda a, b: dot([a[n] for n in names], [b[n] for n in names])


class LBFGS:
    """Minimise ``closure()`` (which returns the global loss and fills ``.grad``) over ``params``."""

    def __init__(
        self,
        params: Mapping[str, Tensor],
        dot: Callable[[Vector, Vector], float],
        history: int = 20,
        lr: float = 1.0,
        max_backtracks: int = 20,
    ) -> None:
        self.params = dict(params)
        self.dot = dot
        self.history = history
        self.lr = lr
        self.max_backtracks = max_backtracks
        self.state = LBFGSState()

    def _grads(self) -> Vector:
        return {
            name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for name, p in self.params.items()
        }

    def _direction(self, grad: Vector) -> Vector:
        """Two-loop recursion: d = -H g."""
        q = {name: g.clone() for name, g in grad.items()}
        alphas = []
        for pair in reversed(self.state.pairs):
            rho = 1.0 / self.dot(pair.y, pair.s)
            a = rho * self.dot(pair.s, q)
            alphas.append((a, rho))
            for name, qi in q.items():
                qi.add_(pair.y[name], alpha=-a)
        if self.state.pairs:
            newest = self.state.pairs[-1]
            gamma = self.dot(newest.s, newest.y) / self.dot(newest.y, newest.y)
            for qi in q.values():
                qi.mul_(gamma)
        for pair, (a, rho) in zip(self.state.pairs, reversed(alphas)):
            b = rho * self.dot(pair.y, q)
            for name, qi in q.items():
                qi.add_(pair.s[name], alpha=a - b)
        return {name: -qi for name, qi in q.items()}

    def step(self, closure: Callable[[], float]) -> float:
        """One iteration: direction, Armijo backtracking, history update. Returns the new loss."""
        loss = closure()
        grad = self._grads()
        direction = self._direction(grad)
        slope = self.dot(grad, direction)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            self.state = LBFGSState()
            direction = {name: -g for name, g in grad.items()}
            slope = self.dot(grad, direction)
        start = {name: p.detach().clone() for name, p in self.params.items()}
        step = self.lr if self.state.pairs else min(1.0, 1.0 / max(self.dot(grad, grad) ** 0.5, 1e-12)) * self.lr
        new_loss = loss
        for _ in range(self.max_backtracks):
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(start[name] + step * direction[name])
            new_loss = closure()
            if new_loss <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(start[name])
            return closure()
        new_grad = self._grads()
        pair = CorrectionPair(
            s={name: p.detach() - start[name] for name, p in self.params.items()},
            y={name: new_grad[name] - grad[name] for name in self.params},
        )
        if self.dot(pair.s, pair.y) > 1e-10 * self.dot(pair.y, pair.y):
            self.state.pairs.append(pair)
        # ``while``: a resumed run may bring more pairs than a lowered lbfgs.history keeps.
        while len(self.state.pairs) > self.history:
            self.state.pairs.pop(0)
        return new_loss
