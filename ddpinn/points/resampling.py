"""Non-adaptive sources: fixed points, and uniform resampling every k steps (Random-R)."""

from __future__ import annotations

from ddpinn.points.base import PointSet, PointSource, rows_of

__all__ = ["FixedPoints", "RandomResampling"]


class FixedPoints(PointSource):
    """The seeded point set of ``sampling`` (grid or random), the same at every step."""

    name = "fixed"

    def initial(self) -> PointSet:
        return PointSet(self.ctx.exp.training_points(0, self.ctx.block))


class RandomResampling(PointSource):
    """Random-R: a fresh draw of every point set every ``sampling.resample_every`` steps (epoch
    e uses the random keys of epoch e, so the union over ranks does not depend on their number)."""

    name = "random_r"
    changes_points = True

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.every = self.cfg.sampling.resample_every

    def initial(self) -> PointSet:
        return PointSet(self.ctx.exp.training_points(0, self.ctx.block))

    def refresh(self, step: int, current: PointSet, score) -> PointSet:
        """Points that stay where they were (a point constraint, given data points) keep their
        per-point state."""
        groups = self.ctx.exp.training_points(self.event(step), self.ctx.block)
        return PointSet(groups, {name: rows_of(x, current.groups.get(name)) for name, x in groups.items()})

    def describe(self) -> str:
        return f"random_r (uniform resampling every {self.every} steps)"
