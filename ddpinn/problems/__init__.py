"""Problems: the declarative API (:mod:`.base`), the registry and the shipped library."""

from ddpinn.problems.base import (
    Constraint,
    Derivatives,
    Face,
    HardConstraint,
    Point,
    Points,
    Problem,
    ProblemError,
)
from ddpinn.problems.registry import make_problem, problem_class, register, registered

__all__ = [
    "Constraint",
    "Derivatives",
    "Face",
    "HardConstraint",
    "Point",
    "Points",
    "Problem",
    "ProblemError",
    "make_problem",
    "problem_class",
    "register",
    "registered",
]
