"""Config -> loss weighting."""

from __future__ import annotations

from ddpinn.train.weighting.base import FixedWeights, LossWeighting, WeightingContext

__all__ = ["make_weighting"]


def make_weighting(ctx: WeightingContext) -> LossWeighting:
    """``loss.weighting``; only ``fixed`` so far."""
    return FixedWeights(ctx)
