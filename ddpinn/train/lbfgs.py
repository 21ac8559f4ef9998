"""Limited-memory BFGS with a backtracking (Armijo) line search, written against an abstract
inner product so that distributed runs use global dot products.

A parameter "vector" is a list of tensors (the model's parameters, as held by this process).
``dot(a, b)`` must return the global inner product: on one process a plain sum, on several the
sum over partitioned parameters all-reduced plus the replicated ones counted once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LBFGS", "LBFGSState"]

Vector = list[Tensor]


@dataclass
class LBFGSState:
    """Correction pairs (s_k, y_k), newest last; the checkpoint stores them like parameters."""

    s: list[Vector] = field(default_factory=list)
    y: list[Vector] = field(default_factory=list)


class LBFGS:
    """Minimise ``closure()`` (which returns the global loss and fills ``.grad``) over ``params``."""

    def __init__(
        self,
        params: Sequence[Tensor],
        dot: Callable[[Vector, Vector], float],
        history: int = 20,
        lr: float = 1.0,
        max_backtracks: int = 20,
    ) -> None:
        self.params = list(params)
        self.dot = dot
        self.history = history
        self.lr = lr
        self.max_backtracks = max_backtracks
        self.state = LBFGSState()

    def _grads(self) -> Vector:
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def _direction(self, grad: Vector) -> Vector:
        """Two-loop recursion: d = -H g."""
        q = [g.clone() for g in grad]
        alphas = []
        for s, y in zip(reversed(self.state.s), reversed(self.state.y)):
            rho = 1.0 / self.dot(y, s)
            a = rho * self.dot(s, q)
            alphas.append((a, rho))
            for qi, yi in zip(q, y):
                qi.add_(yi, alpha=-a)
        if self.state.s:
            s, y = self.state.s[-1], self.state.y[-1]
            gamma = self.dot(s, y) / self.dot(y, y)
            for qi in q:
                qi.mul_(gamma)
        for (s, y), (a, rho) in zip(zip(self.state.s, self.state.y), reversed(alphas)):
            b = rho * self.dot(y, q)
            for qi, si in zip(q, s):
                qi.add_(si, alpha=a - b)
        return [-qi for qi in q]

    def step(self, closure: Callable[[], float]) -> float:
        """One iteration: direction, Armijo backtracking, history update. Returns the new loss."""
        loss = closure()
        grad = self._grads()
        direction = self._direction(grad)
        slope = self.dot(grad, direction)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            self.state = LBFGSState()
            direction = [-g for g in grad]
            slope = self.dot(grad, direction)
        start = [p.detach().clone() for p in self.params]
        step = self.lr if self.state.s else min(1.0, 1.0 / max(self.dot(grad, grad) ** 0.5, 1e-12)) * self.lr
        new_loss = loss
        for _ in range(self.max_backtracks):
            with torch.no_grad():
                for p, p0, d in zip(self.params, start, direction):
                    p.copy_(p0 + step * d)
            new_loss = closure()
            if new_loss <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            with torch.no_grad():
                for p, p0 in zip(self.params, start):
                    p.copy_(p0)
            return closure()
        new_grad = self._grads()
        s = [p.detach() - p0 for p, p0 in zip(self.params, start)]
        y = [g1 - g0 for g1, g0 in zip(new_grad, grad)]
        if self.dot(s, y) > 1e-10 * self.dot(y, y):
            self.state.s.append(s)
            self.state.y.append(y)
            if len(self.state.s) > self.history:
                self.state.s.pop(0)
                self.state.y.pop(0)
        return new_loss
