"""P7: 1+1 D wave equation with a two-scale standing-wave solution (PINNacle Wave1d-C)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import HardConstraint, Problem, ProblemError
from ddpinn.problems.registry import register


@register("wave1d")
@dataclass
class Wave1D(Problem):
    """u_tt = c² u_xx on [0,1]², u(0,t) = u(1,t) = 0, u = sin(πx)cos(2πt) + ½ sin(4πx)cos(8πt).

    Hard constraint u = u(x, 0) + x(1-x) t² · N holds the boundary values, u(x,0) and u_t(x,0) = 0.
    """

    c: float = 2.0
    # Through the constraint's small factor (x(1-x)t², x(1-x)y(1-y)t) N must reach O(100); the
    # un-normalisation scale carries that, so the networks stay O(1).
    output_scale: float = 20.0
    inputs = ("x", "t")
    derivatives = (D("u", "t", "t"), D("u", "x", "x"))

    def __post_init__(self) -> None:
        if not self.c > 0:
            raise ProblemError(f"problem.params.c: must be > 0, got {self.c}")

    def domain(self) -> Box:
        return Box((0.0, 0.0), (1.0, 1.0))

    def residual(self, x, d):
        return d["u_tt"] - self.c**2 * d["u_xx"]

    def hard_constraint(self, x):
        xx, t = x[:, 0], x[:, 1]
        initial = torch.sin(math.pi * xx) + 0.5 * torch.sin(4 * math.pi * xx)
        return HardConstraint(scale=xx * (1 - xx) * t**2, shift=initial)

    def exact(self, x):
        xx, t = x[:, 0], x[:, 1]
        pi = math.pi
        u = torch.sin(pi * xx) * torch.cos(self.c * pi * t) + 0.5 * torch.sin(4 * pi * xx) * torch.cos(4 * self.c * pi * t)
        return u[:, None]
