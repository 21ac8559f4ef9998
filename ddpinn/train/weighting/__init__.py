"""Loss weighting strategies behind one interface, chosen by the ``loss`` config section.

Term t of the loss is Σ_i w_ti r_ti² / N_t over its points (N_t: the global count). A
:class:`LossWeighting` supplies the weights w (a number per term, or one per point), may add
scalars to the step's single all-reduce, and keeps its state in the checkpoint: per-point state
travels with the points (:class:`~ddpinn.points.PointSet`), global state is replicated.
"""

from ddpinn.train.weighting.base import LossWeighting, WeightingContext
from ddpinn.train.weighting.registry import make_weighting

__all__ = ["LossWeighting", "WeightingContext", "make_weighting"]
