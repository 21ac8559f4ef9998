"""ddpinn: distributed multilevel finite-basis physics-informed neural networks.

Public API for declaring problems: :class:`Problem`, :class:`D`, :class:`Box`,
:class:`HardConstraint` (and :func:`box_bubble` to build one), :class:`Constraint` and its regions, and
:func:`register`. Using a trained run: :func:`load` returns a :class:`TrainedModel` whose
:meth:`~TrainedModel.predict` evaluates it (and its derivatives) at any points of the domain.
"""

from ddpinn.api import PredictError, TrainedModel, load
from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems import Constraint, Face, HardConstraint, Point, Points, Problem, register
from ddpinn.problems.ansatz import box_bubble

__version__ = "0.1.0"

__all__ = [
    "Box", "Constraint", "D", "Face", "HardConstraint", "Point", "Points", "PredictError", "Problem", "TrainedModel",
    "box_bubble", "load", "register", "__version__",
]
