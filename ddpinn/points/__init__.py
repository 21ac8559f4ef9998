"""Where the training points come from: point sources behind one interface.

A :class:`PointSource` produces a rank's own points of every loss term for its ownership block,
at the start and at each sampling event; the trainer holds the current :class:`PointSet` and
checkpoints it. Sources are chosen by config (:func:`make_point_source`): fixed points,
uniform resampling (Random-R), residual-based RAD and RAR-D (Wu et al. 2023).
"""

from ddpinn.points.base import PointSet, PointSource, Scorer, SourceContext
from ddpinn.points.registry import make_point_source

__all__ = ["PointSet", "PointSource", "Scorer", "SourceContext", "make_point_source"]
