"""P8: multiscale 2-D heat equation (PINNacle Heat2d-MS), a 3-input (x, y, t) problem."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import HardConstraint, Problem, ProblemError
from ddpinn.problems.registry import register


@register("heat2d_ms")
@dataclass
class Heat2DMultiscale(Problem):
    """u_t = u_xx/(500π)² + u_yy/π² on [0,1]² × [0,5]; u = sin(20πx) sin(πy) e^{-1.0016 t}.

    Hard constraint u = u(x,y,0) + x(1-x) y(1-y) t · N holds the initial and boundary values.
    """

    t_end: float = 5.0
    # Through the constraint's small factor (x(1-x)t², x(1-x)y(1-y)t) N must reach O(100); the
    # un-normalisation scale carries that, so the networks stay O(1).
    output_scale: float = 20.0
    inputs = ("x", "y", "t")
    derivatives = (D("u", "t"), D("u", "x", "x"), D("u", "y", "y"))

    def __post_init__(self) -> None:
        if not self.t_end > 0:
            raise ProblemError(f"problem.params.t_end: must be > 0, got {self.t_end}")

    def domain(self) -> Box:
        return Box((0.0, 0.0, 0.0), (1.0, 1.0, self.t_end))

    def residual(self, x, d):
        return d["u_t"] - d["u_xx"] / (500 * math.pi) ** 2 - d["u_yy"] / math.pi**2

    def hard_constraint(self, x):
        xx, yy, t = x[:, 0], x[:, 1], x[:, 2]
        initial = torch.sin(20 * math.pi * xx) * torch.sin(math.pi * yy)
        return HardConstraint(scale=xx * (1 - xx) * yy * (1 - yy) * t, shift=initial)

    def exact(self, x):
        xx, yy, t = x[:, 0], x[:, 1], x[:, 2]
        return (torch.sin(20 * math.pi * xx) * torch.sin(math.pi * yy) * torch.exp(-1.0016 * t))[:, None]
