"""Equation discovery (Chen et al. 2021, the deck's "alternating direction optimisation"): a
candidate library (:mod:`.library`), STRidge on all-reduced normal equations (:mod:`.stridge`),
observations (:mod:`.data`) and the alternation the trainer calls (:mod:`.alternation`). The
problem that uses them is ``discovery`` (:mod:`ddpinn.problems.library.discovery`)."""

from ddpinn.discovery.alternation import (
    Alternation,
    NoAlternation,
    compare_with_truth,
    format_equation,
    make_alternation,
)
from ddpinn.discovery.library import CandidateLibrary, parse_derivative, term_name
from ddpinn.discovery.stridge import NormalEquations, SparseFit, stridge

__all__ = [
    "Alternation",
    "CandidateLibrary",
    "NoAlternation",
    "NormalEquations",
    "SparseFit",
    "compare_with_truth",
    "format_equation",
    "make_alternation",
    "parse_derivative",
    "stridge",
    "term_name",
]
