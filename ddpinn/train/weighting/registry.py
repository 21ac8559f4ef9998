"""Config -> loss weighting: :func:`make_weighting`, used by the trainer."""

from __future__ import annotations

from ddpinn.train.weighting.balanced import BalancedWeights
from ddpinn.train.weighting.base import FixedWeights, LossWeighting, ProductWeighting, WeightingContext
from ddpinn.train.weighting.causal import CausalWeights
from ddpinn.train.weighting.self_adaptive import SelfAdaptiveWeights

__all__ = ["make_weighting"]

_WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "fixed": FixedWeights,
    "self_adaptive": SelfAdaptiveWeights,
    "balanced": BalancedWeights,
}


def make_weighting(ctx: WeightingContext) -> LossWeighting:
    """``loss.weighting`` (fixed, self_adaptive, balanced), times causal weights when
    ``loss.causal.enabled`` (whose time axis :func:`~ddpinn.build.build_experiment` has checked)."""
    cfg = ctx.exp.cfg.loss
    chosen = _WEIGHTINGS[cfg.weighting](ctx)
    if not cfg.causal.enabled:
        return chosen
    return ProductWeighting(ctx, [chosen, CausalWeights(ctx)])
