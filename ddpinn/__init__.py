"""ddpinn: distributed multilevel finite-basis physics-informed neural networks.

Public API for declaring problems: :class:`Problem`, :class:`D`, :class:`Box`,
:class:`HardConstraint` (and :func:`box_bubble` to build one), :class:`Constraint` and its regions, and
:func:`register`.
"""

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems import Constraint, Face, HardConstraint, Point, Points, Problem, register
from ddpinn.problems.ansatz import box_bubble

__version__ = "0.1.0"

__all__ = [
    "Box", "Constraint", "D", "Face", "HardConstraint", "Point", "Points", "Problem", "box_bubble", "register", "__version__",
]
