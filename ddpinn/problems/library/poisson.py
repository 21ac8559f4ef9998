"""P4: the multiscale 2-D Poisson problem of the multilevel FBPINN paper (Dolean et al. 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.ansatz import box_bubble
from ddpinn.problems.base import HardConstraint, Problem, ProblemError
from ddpinn.problems.registry import register


@register("poisson2d")
@dataclass
class Poisson2D(Problem):
    """-Δu = f on [0,1]², u = 0 on the boundary, u = (1/K) Σ_k sin(ω_k πx) sin(ω_k πy)."""

    frequencies: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    inputs = ("x", "y")
    derivatives = (D("u", "x", "x"), D("u", "y", "y"))
    output_scale = 0.75

    def __post_init__(self) -> None:
        if not self.frequencies or min(self.frequencies) <= 0:
            raise ProblemError(f"problem.params.frequencies: need positive values, got {self.frequencies}")

    def domain(self) -> Box:
        return Box((0.0, 0.0), (1.0, 1.0))

    def source(self, x):
        k = len(self.frequencies)
        return sum(
            2 / k * (w * math.pi) ** 2 * torch.sin(w * math.pi * x[:, 0]) * torch.sin(w * math.pi * x[:, 1])
            for w in self.frequencies
        )

    def residual(self, x, d):
        return -(d["u_xx"] + d["u_yy"]) - self.source(x)

    def hard_constraint(self, x):
        return HardConstraint(scale=box_bubble(x, 1 / max(self.frequencies)))

    def exact(self, x):
        k = len(self.frequencies)
        u = sum(torch.sin(w * math.pi * x[:, 0]) * torch.sin(w * math.pi * x[:, 1]) for w in self.frequencies)
        return (u / k)[:, None]
