"""P1 and P2: first-order ODEs with high-frequency and multiscale solutions (Moseley et al. 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import HardConstraint, Problem, ProblemError
from ddpinn.problems.registry import register


@register("cos1d")
@dataclass
class Cos1D(Problem):
    """P1: du/dx = cos(ωx) on [-2π, 2π], u(0) = 0; exact u = sin(ωx)/ω.

    ω may be conditioned (``problem.conditioned: {omega: [5, 15]}``): every method below is written
    so that ``self.omega`` may be a per-point [n] tensor, the ω column of the points."""

    omega: float = 15.0
    inputs = ("x",)
    derivatives = (D("u", "x"),)
    conditionable = ("omega",)

    def __post_init__(self) -> None:
        if not self.omega > 0:
            raise ProblemError(f"problem.params.omega: must be > 0, got {self.omega}")

    @property
    def output_scale(self) -> float:
        return 1 / self.omega

    def domain(self) -> Box:
        return Box((-2 * math.pi,), (2 * math.pi,))

    def residual(self, x, d):
        return d["u_x"] - torch.cos(self.omega * x[:, 0])

    def hard_constraint(self, x):
        return HardConstraint(scale=torch.tanh(self.omega * x[:, 0]))

    def exact(self, x):
        return (torch.sin(self.omega * x[:, 0]) / self.omega)[:, None]


@register("multiscale_cos1d")
@dataclass
class MultiscaleCos1D(Problem):
    """P2: du/dx = ω₁cos(ω₁x) + ω₂cos(ω₂x) on [-2π, 2π], u(0) = 0; exact sin(ω₁x) + sin(ω₂x)."""

    omega1: float = 1.0
    omega2: float = 15.0
    inputs = ("x",)
    derivatives = (D("u", "x"),)
    output_scale = 2.0

    def __post_init__(self) -> None:
        for name in ("omega1", "omega2"):
            if not getattr(self, name) > 0:
                raise ProblemError(f"problem.params.{name}: must be > 0, got {getattr(self, name)}")

    def domain(self) -> Box:
        return Box((-2 * math.pi,), (2 * math.pi,))

    def residual(self, x, d):
        w1, w2, xx = self.omega1, self.omega2, x[:, 0]
        return d["u_x"] - w1 * torch.cos(w1 * xx) - w2 * torch.cos(w2 * xx)

    def hard_constraint(self, x):
        return HardConstraint(scale=torch.tanh(self.omega2 * x[:, 0]))

    def exact(self, x):
        return (torch.sin(self.omega1 * x[:, 0]) + torch.sin(self.omega2 * x[:, 0]))[:, None]
