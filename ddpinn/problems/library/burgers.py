"""P6: viscous Burgers' equation in 1+1 D with its Hopf–Cole reference solution."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import HardConstraint, Problem, ProblemError
from ddpinn.problems.reference import burgers_hopf_cole
from ddpinn.problems.registry import register


@register("burgers")
@dataclass
class Burgers1D(Problem):
    """u_t + u u_x = ν u_xx on x ∈ [-1, 1], t ∈ [0, 1]; u(x,0) = -sin(πx), u(±1,t) = 0.

    Hard constraint u = tanh(x+1) tanh(x-1) tanh(t) · N - sin(πx).
    """

    nu: float = 0.01 / math.pi
    quadrature_nodes: int = 200
    inputs = ("x", "t")
    derivatives = (D("u", "x"), D("u", "t"), D("u", "x", "x"))

    def __post_init__(self) -> None:
        if not self.nu > 0:
            raise ProblemError(f"problem.params.nu: must be > 0, got {self.nu}")
        # numpy's Gauss-Hermite weights underflow to NaN beyond about 370 nodes.
        if not 16 <= self.quadrature_nodes <= 300:
            raise ProblemError(f"problem.params.quadrature_nodes: must be in [16, 300], got {self.quadrature_nodes}")

    def domain(self) -> Box:
        return Box((-1.0, 0.0), (1.0, 1.0))

    def residual(self, x, d):
        return d["u_t"] + d["u"] * d["u_x"] - self.nu * d["u_xx"]

    def hard_constraint(self, x):
        xx, t = x[:, 0], x[:, 1]
        return HardConstraint(
            scale=torch.tanh(xx + 1) * torch.tanh(xx - 1) * torch.tanh(t), shift=-torch.sin(math.pi * xx)
        )

    def exact(self, x):
        xn = x.detach().cpu().double().numpy()
        u = burgers_hopf_cole(xn[:, 0], xn[:, 1], self.nu, self.quadrature_nodes)
        return torch.as_tensor(u, dtype=x.dtype, device=x.device)[:, None]
