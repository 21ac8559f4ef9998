"""Equation discovery: the PDE itself is unknown; u_t = Σ_k ξ_k θ_k(u, u_x, …) over a library.

Defines :class:`EquationDiscovery` (registered as ``discovery``). The networks are trained on
``data_weight`` × the data misfit plus the library residual u_t − Θ ξ at the collocation points,
ξ held fixed; every few Adam steps the alternation (:mod:`ddpinn.discovery.alternation`) refits
ξ by STRidge from the networks' jets. Before the first fit (``warmup`` steps) ξ is unknown and
the residual is switched off: the networks learn the data alone. With ``learn_coefficients``,
the support of the last fit is kept and ξ on it is trained by gradient with the networks (as in
PINN-SR and DeepMoD): ξ_k = ξ_k^fit · (1 + δ_k), δ_k the trainable problem parameter
``xi_correction[<term>]``, so it is replicated, all-reduced and checkpointed like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpinn.discovery.data import Observations, check_observations, read_observations, sample_exact
from ddpinn.discovery.library import CandidateLibrary, parse_derivative
from ddpinn.geometry import Box, GeometryError
from ddpinn.problems.base import Constraint, Points, Problem, ProblemError
from ddpinn.problems.registry import make_problem, register

__all__ = ["KNOWN_EQUATIONS", "EquationDiscovery", "correction_name"]


def correction_name(term: str) -> str:
    """The trainable relative correction δ of term ``term``'s coefficient: ``xi_correction[u*u_x]``."""
    return f"xi_correction[{term}]"

KNOWN_EQUATIONS = {
    "burgers": lambda p: {"u*u_x": -1.0, "u_xx": p.nu},
    "allen_cahn": lambda p: {"u_xx": p.diffusion, "u": p.reaction, "u^3": -p.reaction},
}
"""The true right-hand side of u_t = … for registered problems with a time input, by term name:
the default of ``truth`` when ``reference`` names one of them."""


@register("discovery")
@dataclass
class EquationDiscovery(Problem):
    """Equation discovery: learn sparse ξ in u_t = Σ ξ_k θ_k from observations of u (STRidge)."""

    reference: str = "burgers"
    """A registered problem whose inputs, domain and exact solution are used: the observations
    are its exact solution (unless ``data_file`` is given) and the test error is against it.
    ``""``: none (then give ``data_file``, ``inputs`` and ``bounds``)."""
    reference_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of ``reference`` (e.g. ``{nu: 0.01}``)."""
    data_file: str = ""
    """Observations from a file instead (npz, csv or h5 with a column per input and one named
    like the field, e.g. x, t, u; a path relative to the working directory)."""
    inputs: list[str] = field(default_factory=list)
    """Input axis names, with ``data_file`` and no ``reference`` (e.g. [x, t])."""
    bounds: list[list[float]] = field(default_factory=list)
    """The domain, [lo, hi] per input axis, with ``data_file`` and no ``reference``."""
    observations: list[int] | int = field(default_factory=lambda: [256, 100])
    """Points where the exact solution is observed: a grid (points per axis, ends included) or
    a number of uniform random points."""
    noise: float = 0.0
    """Relative Gaussian noise added to the sampled observations: σ = noise · std(u)."""
    data_seed: int = 0
    """Seed of the random observation points and of the noise."""
    data_weight: float = 1.0
    """Weight of the data misfit mean((u − u_obs)²); the library residual has weight 1."""
    target: str = "u_t"
    """The derivative the library explains (left-hand side)."""
    library: list[str] = field(default_factory=lambda: ["u", "u_x", "u_xx", "u_xxx"])
    """Derivatives the candidate terms are products of (names like u, u_x, u_xx)."""
    degree: int = 2
    """Highest total degree of the generated products (>= 1; the constant 1 is degree 0)."""
    max_derivative_factors: int | None = None
    """Keep only the products with at most this many derivative factors (1: PDE-FIND's library,
    powers of u times at most one derivative); None: all products up to ``degree``."""
    terms: list[str] = field(default_factory=list)
    """An explicit list of terms (e.g. [u*u_x, u_xx]) instead of all products up to ``degree``."""
    truth: dict[str, float] = field(default_factory=dict)
    """The true coefficients by term name, to report errors (default: known for burgers, allen_cahn)."""
    warmup: int = 1000
    """Adam steps on the data alone before the first fit of ξ (>= 1)."""
    every: int = 500
    """Adam steps between two fits of ξ (there is also one at the last Adam step)."""
    tolerance: float = 0.05
    """STRidge threshold on the normalised coefficients: a term whose contribution has an RMS
    below tolerance × RMS(target) over the collocation points is dropped (>= 0)."""
    ridge: float = 1e-5
    """Ridge parameter λ of the normalised regression while terms are selected (>= 0)."""
    fit_margin: float = 0.0
    """Fraction of each axis's length, at both ends, whose collocation points are left out of
    the STRidge fit (the networks' derivatives are least accurate at the domain's edges); in
    [0, 0.5). The library residual of the training loss still covers every point."""
    last_fit: int = 0
    """Adam step of the last STRidge fit (0: the last Adam step); the support is fixed after it."""
    learn_coefficients: bool = False
    """After the last fit, train ξ on its support by gradient with the networks through the
    library residual: ξ_k = ξ_k^fit · (1 + δ_k) with δ_k trainable (from 0). The correction is
    relative so that Adam's steps, about lr each, are alike for ν ≈ 3e-3 and for 1."""

    outputs = ("u",)

    def __post_init__(self) -> None:
        self._check_numbers()
        base = self._make_reference()
        self.inputs = tuple(base.inputs) if base is not None else tuple(self.inputs)
        self._box = base.domain() if base is not None else self._box_from_params()
        self._exact = base.exact if base is not None else None
        self.target_derivative = parse_derivative(self.target, self.inputs, self.outputs, "problem.params.target")
        declared = [parse_derivative(n, self.inputs, self.outputs, "problem.params.library") for n in self.library]
        if self.target_derivative in declared:
            raise ProblemError(f"problem.params.library: contains the target {self.target!r}; remove it from the library")
        if len({d.name for d in declared}) != len(declared):
            raise ProblemError(f"problem.params.library: a derivative is listed twice in {self.library}")
        names = [d.name for d in declared]
        self.candidates = (CandidateLibrary.from_names(names, self.terms) if self.terms
                           else CandidateLibrary.generated(names, self.degree, self.max_derivative_factors))
        self.derivatives = (self.target_derivative, *declared)
        if not self.truth and self.reference in KNOWN_EQUATIONS:
            self.truth = KNOWN_EQUATIONS[self.reference](base)
        self._observations = self._load_observations()
        # The alternation replaces these by tensors of the run's dtype and device (ddpinn.discovery).
        self.coefficients = torch.zeros(len(self.candidates), dtype=torch.float64)
        self.residual_on = torch.zeros((), dtype=torch.float64)
        self.learning_on = torch.zeros((), dtype=torch.float64)
        """1 once ξ is trained by gradient (after the last fit, with ``learn_coefficients``)."""
        if self.learn_coefficients:
            # An instance's own trainable names (the class declares none): the trainer makes
            # each a replicated parameter bound to this attribute.
            self.trainable = tuple(correction_name(term) for term in self.candidates.names)
            for name in self.trainable:
                setattr(self, name, 0.0)

    def _check_numbers(self) -> None:
        for name, value, low in (("noise", self.noise, 0.0), ("tolerance", self.tolerance, 0.0),
                                 ("ridge", self.ridge, 0.0)):
            if not (value >= low and math.isfinite(value)):
                raise ProblemError(f"problem.params.{name}: must be >= {low:g}, got {value}")
        if not (self.data_weight > 0 and math.isfinite(self.data_weight)):
            raise ProblemError(f"problem.params.data_weight: must be > 0, got {self.data_weight}")
        if self.degree < 1:
            raise ProblemError(f"problem.params.degree: must be >= 1, got {self.degree}")
        if self.max_derivative_factors is not None and self.max_derivative_factors < 0:
            raise ProblemError(f"problem.params.max_derivative_factors: must be >= 0, got {self.max_derivative_factors}")
        if not 0.0 <= self.fit_margin < 0.5:
            raise ProblemError(f"problem.params.fit_margin: must be in [0, 0.5), got {self.fit_margin}")
        if self.last_fit and self.last_fit < self.warmup:
            raise ProblemError(
                f"problem.params.last_fit: {self.last_fit} is before the first fit (warmup {self.warmup}); "
                "raise it, or 0 for the last Adam step"
            )
        if self.warmup < 1 or self.every < 1:
            raise ProblemError(
                f"problem.params.warmup and every: must be >= 1 (the first fit needs a network trained on "
                f"the data), got warmup {self.warmup}, every {self.every}"
            )
        counts = [self.observations] if isinstance(self.observations, int) else self.observations
        if not counts or min(counts) < 1:
            raise ProblemError(f"problem.params.observations: need at least 1 point (per axis), got {self.observations}")

    def _make_reference(self) -> Problem | None:
        if self.reference and (self.inputs or self.bounds):
            raise ProblemError(
                "problem.params.inputs: inputs and bounds are for data without a reference; the reference "
                f"{self.reference!r} gives them: drop them, or set reference: ''"
            )
        if not self.reference:
            if not self.data_file:
                raise ProblemError("problem.params.reference: give a registered problem to sample, or a data_file")
            return None
        if self.reference == "discovery":
            raise ProblemError("problem.params.reference: must be a problem with an equation, not 'discovery'")
        try:
            return make_problem(self.reference, self.reference_params)
        except ProblemError as err:
            raise ProblemError(f"problem.params.reference ({self.reference}): {err}") from None

    def _box_from_params(self) -> Box:
        if not self.inputs or len(self.bounds) != len(self.inputs) or any(len(b) != 2 for b in self.bounds):
            raise ProblemError(
                "problem.params.bounds: without a reference give inputs (e.g. [x, t]) and [lo, hi] per input "
                f"axis, got inputs {list(self.inputs)}, bounds {self.bounds}"
            )
        try:
            return Box(tuple(b[0] for b in self.bounds), tuple(b[1] for b in self.bounds))
        except GeometryError as err:
            raise ProblemError(f"problem.params.bounds: {err}") from None

    def _load_observations(self) -> Observations:
        if self.data_file:
            obs = read_observations(Path(self.data_file), self.inputs, self.outputs[0])
            where = "problem.params.data_file"
        else:
            if not isinstance(self.observations, int) and len(self.observations) != len(self.inputs):
                raise ProblemError(
                    f"problem.params.observations: {len(self.observations)} counts for the inputs {list(self.inputs)}"
                )
            obs = sample_exact(self._exact, self._box, self.observations, self.noise, self.data_seed)
            where = "problem.params.observations"
        check_observations(obs, self._box, self.inputs, where)
        return obs

    def domain(self) -> Box:
        return self._box

    def effective_coefficients(self) -> torch.Tensor:
        """ξ [n_terms] as the residual uses it: the fitted values, times (1 + δ) while learnt."""
        if not self.learn_coefficients:
            return self.coefficients
        corrections = torch.stack([torch.as_tensor(getattr(self, n)) for n in self.trainable]).to(self.coefficients)
        return self.coefficients * (1 + self.learning_on * corrections)

    def progress_parameters(self, values: dict[str, float]) -> dict[str, float]:
        """None: the progress line's equation already shows ξ with the corrections applied."""
        return {}

    def residual(self, x, d):
        theta = self.candidates.evaluate(d, d[self.target])
        return self.residual_on * (d[self.target] - theta @ self.effective_coefficients())

    def constraints(self):
        points = Points(torch.as_tensor(self._observations.x), values=torch.as_tensor(self._observations.values))
        return (Constraint("data", points, lambda x, d: d["u"] - d.data[:, 0], weight=self.data_weight),)

    def exact(self, x):
        return None if self._exact is None else self._exact(x)
