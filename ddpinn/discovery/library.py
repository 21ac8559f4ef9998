"""The candidate library of equation discovery: terms θ_k(u, u_x, u_xx, …) and their values.

Defines :class:`CandidateLibrary` (declared derivatives, the product terms over them, their
names and :meth:`~CandidateLibrary.evaluate`, which gives Θ from a problem's
:class:`~ddpinn.problems.Derivatives`) and :func:`parse_derivative`. Used by the discovery
problem (the residual u_t − Θ ξ) and by the alternation (Θ for the sparse regression).

How terms are generated: every monomial of total degree 0..``degree`` in the declared
derivatives, each derivative used any number of times, ordered by degree and then by the
declared order (``itertools.combinations_with_replacement``). With derivatives [u, u_x, u_xx]
and degree 2 the 10 terms are ``1, u, u_x, u_xx, u^2, u*u_x, u*u_xx, u_x^2, u_x*u_xx, u_xx^2``.
With ``max_derivative_factors`` = m, only the monomials with at most m factors that are
derivatives (not the field itself) are kept: m = 1 gives the library of PDE-FIND (Rudy et al.
2017), powers of u times at most one derivative (degree 2: ``1, u, u_x, u_xx, u^2, u*u_x,
u*u_xx``); products of two derivatives, which near a shock are dominated by the network's least
accurate values there, are then left out. A term's name lists its factors in the declared order joined by ``*``, a repeated factor as
``name^k``; ``1`` is the constant. An explicit list of terms (names in this form, factors in any
order) replaces the generated set.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpinn.jets import D
from ddpinn.problems.base import Derivatives, ProblemError

__all__ = ["CandidateLibrary", "parse_derivative", "term_name"]

Term = tuple[int, ...]
"""A term as the sorted indices of its factors in the declared derivatives; () is the constant."""


def parse_derivative(name: str, inputs: Sequence[str], outputs: Sequence[str], where: str) -> D:
    """The :class:`D` called ``name`` (``u``, ``u_x``, ``u_xxt``): the field before the first
    ``_``, then input axis names (longest match first, so multi-letter axes work).
    Raises :class:`ProblemError` naming ``where`` when the field or an axis is not the problem's."""
    field, _, rest = name.partition("_")
    if field not in outputs:
        raise ProblemError(f"{where}: {name!r} refers to field {field!r}, but the outputs are {list(outputs)}")
    axes: list[str] = []
    while rest:
        match = max((a for a in inputs if rest.startswith(a)), key=len, default=None)
        if match is None:
            raise ProblemError(
                f"{where}: {name!r} differentiates by {rest!r}, but the problem's inputs are {list(inputs)}"
            )
        axes.append(match)
        rest = rest[len(match):]
    return D(field, *axes)


def term_name(factors: Sequence[str]) -> str:
    """``["u", "u", "u_xx"]`` -> ``"u^2*u_xx"``; ``[]`` -> ``"1"`` (factors in the order given)."""
    if not factors:
        return "1"
    counts = Counter(factors)
    return "*".join(f if counts[f] == 1 else f"{f}^{counts[f]}" for f in dict.fromkeys(factors))


@dataclass(frozen=True)
class CandidateLibrary:
    """The terms θ_k of a discovery library.

    ``derivatives``: the declared derivative names, e.g. ``("u", "u_x", "u_xx")``; ``terms``: each
    term as sorted indices into ``derivatives`` (``(0, 1)`` is u·u_x; ``()`` is the constant 1).
    """

    derivatives: tuple[str, ...]
    terms: tuple[Term, ...]

    @classmethod
    def generated(cls, derivatives: Sequence[str], degree: int, max_derivative_factors: int | None = None
                  ) -> CandidateLibrary:
        """Every monomial of total degree 0..``degree`` with at most ``max_derivative_factors``
        factors that are derivatives (None: any number; see the module docstring)."""
        if degree < 1:
            raise ProblemError(f"problem.params.degree: must be >= 1, got {degree}")
        is_derivative = ["_" in name for name in derivatives]
        terms = [t for k in range(degree + 1) for t in itertools.combinations_with_replacement(range(len(derivatives)), k)
                 if max_derivative_factors is None or sum(is_derivative[i] for i in t) <= max_derivative_factors]
        return cls(tuple(derivatives), tuple(terms))

    @classmethod
    def from_names(cls, derivatives: Sequence[str], names: Sequence[str]) -> CandidateLibrary:
        """The terms called ``names`` (``u*u_x``, ``u^2*u_xx``, ``1``), each a product of declared
        derivatives; raises :class:`ProblemError` naming ``problem.params.terms`` otherwise."""
        terms = []
        for name in names:
            factors: list[int] = []
            for part in ([] if name.strip() == "1" else name.split("*")):
                base, _, power = part.strip().partition("^")
                if base not in derivatives:
                    raise ProblemError(
                        f"problem.params.terms: {name!r} names {base!r}, which is not a declared derivative "
                        f"(problem.params.library: {list(derivatives)}); declare it there or drop the term"
                    )
                if power and not (power.isdigit() and int(power) >= 1):
                    raise ProblemError(f"problem.params.terms: {name!r}: the power of {base!r} must be an integer >= 1")
                factors += [derivatives.index(base)] * (int(power) if power else 1)
            terms.append(tuple(sorted(factors)))
        if len(set(terms)) != len(terms):
            raise ProblemError(f"problem.params.terms: a term is listed twice in {list(names)}")
        if not terms:
            raise ProblemError("problem.params.terms: the list of terms is empty")
        return cls(tuple(derivatives), tuple(terms))

    @property
    def names(self) -> list[str]:
        """Term names in library order, e.g. ``["1", "u", "u_x", "u*u_x"]``."""
        return [term_name([self.derivatives[i] for i in t]) for t in self.terms]

    def __len__(self) -> int:
        return len(self.terms)

    def evaluate(self, d: Derivatives, like: Tensor) -> Tensor:
        """Θ at the points of ``d``: [n_points, n_terms], column k = θ_k. ``like``: a [n_points]
        tensor giving the dtype and device of the constant column."""
        values = [d[name] for name in self.derivatives]
        ones = torch.ones_like(like)
        columns = []
        for term in self.terms:
            column = ones
            for i in term:
                column = column * values[i]
            columns.append(column)
        return torch.stack(columns, dim=1)
