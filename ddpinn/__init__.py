"""ddpinn: distributed multilevel finite-basis physics-informed neural networks.

Public API for declaring problems: :class:`Problem`, :class:`D`, :class:`Box`,
:class:`HardConstraint`, :class:`Constraint` and its regions, and :func:`register`.
"""

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems import Constraint, Face, HardConstraint, Point, Points, Problem, register

__version__ = "0.1.0"

__all__ = ["Box", "Constraint", "D", "Face", "HardConstraint", "Point", "Points", "Problem", "register", "__version__"]
