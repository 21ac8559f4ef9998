"""P5: 2-D Helmholtz equation with a point-like Gaussian source (Dolean et al. 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import HardConstraint, Problem, ProblemError
from ddpinn.problems.ansatz import box_bubble
from ddpinn.problems.reference import helmholtz_fd
from ddpinn.problems.registry import register


@register("helmholtz2d")
@dataclass
class Helmholtz2D(Problem):
    """Δu + (ω/c)² u = f on [0,1]², u = 0 on the boundary, f a unit Gaussian of width s_f at (½,½).

    The reference solution is a 5-point finite-difference solve on a ``reference_grid``² grid.
    """

    omega: float = 10 * math.pi
    c: float = 1.0
    source_width: float = 0.05
    output_scale: float = 0.07
    reference_grid: int = 320
    inputs = ("x", "y")
    derivatives = (D("u", "x", "x"), D("u", "y", "y"))

    def __post_init__(self) -> None:
        for name in ("omega", "c", "source_width", "output_scale"):
            if not getattr(self, name) > 0:
                raise ProblemError(f"problem.params.{name}: must be > 0, got {getattr(self, name)}")
        if self.reference_grid < 8:
            raise ProblemError(f"problem.params.reference_grid: need at least 8 nodes, got {self.reference_grid}")

    @property
    def k(self) -> float:
        return self.omega / self.c

    def domain(self) -> Box:
        return Box((0.0, 0.0), (1.0, 1.0))

    def source(self, x):
        r2 = (x[:, 0] - 0.5) ** 2 + (x[:, 1] - 0.5) ** 2
        s2 = self.source_width**2
        return torch.exp(-r2 / (2 * s2)) / (2 * math.pi * s2)

    def residual(self, x, d):
        return d["u_xx"] + d["u_yy"] + self.k**2 * d["u"] - self.source(x)

    def hard_constraint(self, x):
        return HardConstraint(scale=box_bubble(x, 1 / self.omega))

    def exact(self, x):
        u = helmholtz_fd(x.detach().cpu().double().numpy(), self.k, self.source_width, self.reference_grid)
        return torch.as_tensor(u, dtype=x.dtype, device=x.device)[:, None]
