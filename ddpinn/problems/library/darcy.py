"""Field inversion: learn an unknown conductivity field k(x, y) jointly with u from noisy u data.

Defines :class:`DarcyInverse` (registered as ``darcy_inverse``): −∇·(k∇u) = f on [0, 1]² with
two FBPINN outputs, u and k, trained together on the PDE residual and on observations of u only.

Why k is identifiable, and what is given about it: with u and f known, the PDE expanded,
∇k·∇u + k Δu = −f, is a first-order transport equation for k along the characteristics of ∇u,
so k is determined by its values where they enter the domain, and by nothing less: without them
any k + c·g with g transported by the homogeneous equation fits the same data. Where ∇u
vanishes the equation says little about k. So u = x + y + b sin(πx) sin(πy) with b = 1/4: its
gradient never vanishes (|bπ| < 1), the characteristics run from the sides x = 0, y = 0 to the
sides x = 1, y = 1, and k is pinned by its value on the inflow sides. (With u = sin(πx) sin(πy),
u = 0 on the boundary, ∇u vanishes at the corners and centre, and k was recovered only to 9% rel
L2, its errors along the diagonals out of the corners.) The problem gives k on the boundary
(k = 1 there, the value of the two-scale field below) as a hard constraint, k = 1 + bubble · N_k,
and u's boundary values x + y as u = x + y + bubble · N_u; nothing else about k is used. k is the
network output itself (not exp of it): the residual stays linear in k, and the true field
(0.3 ≤ k ≤ 1.7) is far from 0, so positivity needs no enforcing.

The true field has a coarse and a fine scale,

    k = 1 + a_c sin(m_c πx) sin(m_c πy) + a_f sin(m_f πx) sin(m_f πy),

(integer wave numbers m, so k = 1 on the boundary), and f = −(k_x u_x + k_y u_y + k Δu) is
evaluated analytically. Both outputs use the same subdomain networks (one network per
subdomain with two output columns, each with its own ``network.output_scale``); a separate
decomposition for k is not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.ansatz import box_bubble
from ddpinn.problems.base import Constraint, Derivatives, HardConstraint, Points, Problem, ProblemError
from ddpinn.problems.registry import register

__all__ = ["U_BUMP", "DarcyInverse"]

U_BUMP = 0.25
"""b in u = x + y + b sin(πx) sin(πy): below 1/π, so that ∇u never vanishes."""


@register("darcy_inverse")
@dataclass
class DarcyInverse(Problem):
    """−∇·(k∇u) = f on [0,1]², u = x + y + sin(πx) sin(πy)/4; k(x, y) unknown, learnt from noisy u data.

    Outputs (u, k). The observations are the exact u at ``n_observations`` uniform random points
    of the open square, plus Gaussian noise of standard deviation ``noise`` × RMS(u) over those
    points, all drawn from ``data_seed``.
    """

    coarse_amplitude: float = 0.5
    """a_c: amplitude of the coarse scale of k."""
    coarse_wavenumber: int = 2
    """m_c: the coarse scale is sin(m_c πx) sin(m_c πy) (a positive integer, so k = 1 on the boundary)."""
    fine_amplitude: float = 0.2
    """a_f: amplitude of the fine scale of k."""
    fine_wavenumber: int = 8
    """m_f: the fine scale is sin(m_f πx) sin(m_f πy) (a positive integer)."""
    n_observations: int = 2000
    """Number of observations of u (>= 1)."""
    noise: float = 0.01
    """Relative noise of the observations (>= 0): σ = noise × RMS of the exact u over them."""
    data_seed: int = 0
    """Seed of the observation points and of the noise."""
    data_weight: float = 1e4
    """Weight of the data misfit mean((u − u_obs)²) against the PDE residual's weight 1 (> 0)."""
    inputs = ("x", "y")
    outputs = ("u", "k")
    derivatives = (D("u", "x"), D("u", "y"), D("u", "x", "x"), D("u", "y", "y"), D("k", "x"), D("k", "y"))

    def __post_init__(self) -> None:
        for name in ("coarse_wavenumber", "fine_wavenumber"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProblemError(
                    f"problem.params.{name}: must be a positive integer (k = 1 on the boundary), got {value!r}"
                )
        if abs(self.coarse_amplitude) + abs(self.fine_amplitude) >= 1:
            raise ProblemError(
                "problem.params.fine_amplitude: |coarse_amplitude| + |fine_amplitude| must be < 1 so that k > 0, "
                f"got |{self.coarse_amplitude}| + |{self.fine_amplitude}|"
            )
        if isinstance(self.n_observations, bool) or not isinstance(self.n_observations, int) or self.n_observations < 1:
            raise ProblemError(f"problem.params.n_observations: must be an integer >= 1, got {self.n_observations!r}")
        if not self.noise >= 0:
            raise ProblemError(f"problem.params.noise: must be >= 0 (a relative standard deviation), got {self.noise}")
        if not self.data_weight > 0:
            raise ProblemError(f"problem.params.data_weight: must be > 0, got {self.data_weight}")
        self._observations = self._observe()

    def _observe(self) -> Points:
        """The noisy observations of u: Points x [n, 2] with values [n, 1]."""
        gen = torch.Generator().manual_seed(self.data_seed)
        x = torch.rand(self.n_observations, 2, generator=gen, dtype=torch.float64)
        u = self.exact_u(x)
        sigma = self.noise * u.square().mean().sqrt()
        observed = u + sigma * torch.randn(self.n_observations, generator=gen, dtype=torch.float64)
        return Points(x, values=observed[:, None])

    def domain(self) -> Box:
        return Box((0.0, 0.0), (1.0, 1.0))

    # ------------------------------------------------------------------ the true fields
    def exact_u(self, x: Tensor) -> Tensor:
        """u = x + y + b sin(πx) sin(πy) at ``x`` [n, 2]: [n]."""
        return x[:, 0] + x[:, 1] + U_BUMP * torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])

    def _scales(self) -> tuple[tuple[float, float], ...]:
        """(amplitude, angular frequency m·π) of each scale of k."""
        return (
            (self.coarse_amplitude, self.coarse_wavenumber * math.pi),
            (self.fine_amplitude, self.fine_wavenumber * math.pi),
        )

    def exact_k(self, x: Tensor) -> Tensor:
        """The true k at ``x`` [n, 2]: [n]."""
        k = torch.ones_like(x[:, 0])
        for amplitude, w in self._scales():
            k = k + amplitude * torch.sin(w * x[:, 0]) * torch.sin(w * x[:, 1])
        return k

    def source(self, x: Tensor) -> Tensor:
        """f = −(k_x u_x + k_y u_y + k Δu) for the true k and u, analytically: [n]."""
        sx, sy = torch.sin(math.pi * x[:, 0]), torch.sin(math.pi * x[:, 1])
        u_x = 1 + U_BUMP * math.pi * torch.cos(math.pi * x[:, 0]) * sy
        u_y = 1 + U_BUMP * math.pi * sx * torch.cos(math.pi * x[:, 1])
        laplacian = -2 * math.pi**2 * U_BUMP * sx * sy
        k_x = sum(a * w * torch.cos(w * x[:, 0]) * torch.sin(w * x[:, 1]) for a, w in self._scales())
        k_y = sum(a * w * torch.sin(w * x[:, 0]) * torch.cos(w * x[:, 1]) for a, w in self._scales())
        return -(k_x * u_x + k_y * u_y + self.exact_k(x) * laplacian)

    def exact(self, x: Tensor) -> Tensor:
        return torch.stack([self.exact_u(x), self.exact_k(x)], dim=1)

    # ------------------------------------------------------------------ the PDE and the data
    def residual(self, x: Tensor, d: Derivatives) -> Tensor:
        flux_divergence = d["k_x"] * d["u_x"] + d["k_y"] * d["u_y"] + d["k"] * (d["u_xx"] + d["u_yy"])
        return -flux_divergence - self.source(x)

    def hard_constraint(self, x: Tensor) -> HardConstraint:
        # u = x + y and k = 1 (their known boundary values) on all four sides. Each bubble's
        # layer follows its field's shortest length scale (README, "Choosing the ansatz"): 1/4
        # for u's bump sin(πx) sin(πy), 1/m_f for k. A layer as thin as k's for u (measured:
        # 1/32) makes the networks learn a steep N_u near the sides, and training stalls at k ≈ 0.
        bubbles = torch.stack([box_bubble(x, 0.25), box_bubble(x, 1 / self.fine_wavenumber)], dim=1)
        boundary_values = torch.stack([x[:, 0] + x[:, 1], torch.ones_like(x[:, 0])], dim=1)
        return HardConstraint(scale=bubbles, shift=boundary_values)

    def constraints(self) -> tuple[Constraint, ...]:
        return (
            Constraint("data", self._observations, lambda x, d: d["u"] - d.data[:, 0], weight=self.data_weight),
        )
