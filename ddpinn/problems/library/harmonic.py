"""P3: the underdamped, high-frequency damped harmonic oscillator (Moseley et al. 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import Constraint, HardConstraint, Point, Points, Problem, ProblemError
from ddpinn.problems.registry import register


@register("harmonic")
@dataclass
class HarmonicOscillator(Problem):
    """u'' + 2d u' + w0² u = 0 on t ∈ [0, 1], u(0) = 1, u'(0) = 0.

    ``constraint``: ``hard`` (u = 1 + tanh(t/0.1)² · N) or ``soft`` (weights 1e6 on u(0) and
    1e2 on u'(0), as in the FBPINN paper).
    """

    d: float = 2.0
    w0: float = 80.0
    constraint: str = "hard"
    inputs = ("t",)
    derivatives = (D("u", "t"), D("u", "t", "t"))

    def __post_init__(self) -> None:
        if self.constraint not in ("hard", "soft"):
            raise ProblemError(f"problem.params.constraint: must be 'hard' or 'soft', got {self.constraint!r}")
        if not 0 <= self.d < self.w0:
            raise ProblemError(f"problem.params.d: must satisfy 0 <= d < w0 (underdamped), got d={self.d}, w0={self.w0}")

    def domain(self) -> Box:
        return Box((0.0,), (1.0,))

    def residual(self, x, d):
        return d["u_tt"] + 2 * self.d * d["u_t"] + self.w0**2 * d["u"]

    def hard_constraint(self, x):
        if self.constraint == "soft":
            return None
        return HardConstraint(scale=torch.tanh(x[:, 0] / 0.1) ** 2, shift=1.0)

    def constraints(self):
        if self.constraint == "hard":
            return ()
        return (
            Constraint("u(0)=1", Point((0.0,)), lambda x, d: d["u"] - 1.0, weight=1e6),
            Constraint("u'(0)=0", Point((0.0,)), lambda x, d: d["u_t"], weight=1e2, derivatives=(D("u", "t"),)),
        )

    def exact(self, x):
        w = math.sqrt(self.w0**2 - self.d**2)
        phi = math.atan(-self.d / w)
        amplitude = 1 / (2 * math.cos(phi))
        t = x[:, 0]
        return (torch.exp(-self.d * t) * 2 * amplitude * torch.cos(phi + w * t))[:, None]


@register("harmonic_inverse")
@dataclass
class HarmonicInverse(HarmonicOscillator):
    """P3 inverse: learn the friction μ (= 2d) from noisy observations of u.

    u'' + μ u' + w0² u = 0 with the hard constraint of P3; μ starts at ``mu`` and is trained with
    the networks. The observations are the exact solution (true d) at ``n_observations`` random
    times in (0, 1], plus Gaussian noise of standard deviation ``noise``, all from ``data_seed``.
    """

    mu: float = 0.0
    n_observations: int = 13
    noise: float = 0.01
    data_seed: int = 0
    data_weight: float = 1e6
    trainable = ("mu",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.constraint != "hard":
            raise ProblemError("problem.params.constraint: the inverse problem uses the hard constraint")
        if self.n_observations < 1 or self.noise < 0 or self.data_weight <= 0:
            raise ProblemError(
                "problem.params: need n_observations >= 1, noise >= 0 and data_weight > 0, got "
                f"{self.n_observations}, {self.noise}, {self.data_weight}"
            )
        gen = torch.Generator().manual_seed(self.data_seed)
        t = torch.rand(self.n_observations, 1, generator=gen, dtype=torch.float64) * (1 - 1e-9) + 1e-9
        u = self.exact(t) + self.noise * torch.randn(self.n_observations, 1, generator=gen, dtype=torch.float64)
        self._observations = Points(t, values=u)

    def true_parameters(self) -> dict[str, float]:
        return {"mu": 2 * self.d}

    def residual(self, x, d):
        return d["u_tt"] + self.mu * d["u_t"] + self.w0**2 * d["u"]

    def constraints(self):
        return (Constraint("data", self._observations, lambda x, d: d["u"] - d.data[:, 0], weight=self.data_weight),)
