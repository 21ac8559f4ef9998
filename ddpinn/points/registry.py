"""Config -> point source."""

from __future__ import annotations

from ddpinn.points.base import PointSource, SourceContext
from ddpinn.points.resampling import FixedPoints, RandomResampling
from ddpinn.points.residual import RAD, RARD

__all__ = ["make_point_source"]


def make_point_source(ctx: SourceContext) -> PointSource:
    """The source that ``sampling`` asks for: ``adaptive.method`` (rad, rar_d), else uniform
    resampling when ``resample_every`` > 0, else fixed points."""
    s = ctx.exp.cfg.sampling
    if s.adaptive.method == "rad":
        return RAD(ctx)
    if s.adaptive.method == "rar_d":
        return RARD(ctx)
    if s.resample_every:
        return RandomResampling(ctx)
    return FixedPoints(ctx)
