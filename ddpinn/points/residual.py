"""Residual-based adaptive sources (Wu et al. 2023): RAD and RAR-D.

At each event (every ``sampling.adaptive.every`` Adam steps) a rank draws ``m · N`` candidates
in its block from the per-cell random keys of that event (so the union over ranks does not
depend on their number), scores them by the PDE residual of the current model, and forms the
density p(x) = |r(x)|^a / mean(|r|^a) + c, the mean taken over all candidates with one
all-reduce. RAD replaces the collocation points by N draws from p without replacement; RAR-D
adds ``add`` draws to the points it has. Draws use :mod:`ddpinn.points.draw`, so the points are
the same on any rank count. Soft-constraint points stay as sampled at the start.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpinn import rng
from ddpinn.points.base import PointSet, PointSource, Scorer
from ddpinn.points.draw import point_uniforms, sampling_keys, select_top
from ddpinn.sampling import SamplingMethod, sample_box

__all__ = ["ResidualDensitySource", "RAD", "RARD"]


class ResidualDensitySource(PointSource):
    """Shared machinery of RAD and RAR-D: the event schedule, candidates and their density."""

    adaptive = True
    changes_points = True

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.settings = self.cfg.sampling.adaptive
        self.every = self.settings.every
        self.n_target = ctx.exp.collocation_count

    def initial(self) -> PointSet:
        return PointSet(self.ctx.exp.training_points(0, self.ctx.block))

    def regenerable(self, step: int) -> dict[str, np.ndarray]:
        """The soft-constraint points (as drawn at the start); the collocation points are read back."""
        groups = self.ctx.exp.training_points(0, self.ctx.block)
        del groups["pde"]
        return groups

    def candidates(self, event: int) -> np.ndarray:
        """This rank's candidates of ``event``: [n_c, dim] float64."""
        exp, s = self.ctx.exp, self.cfg.sampling
        domain = exp.decomposition.domain
        n = int(round(self.settings.candidate_factor * self.n_target))
        return sample_box(
            domain.lo, domain.hi, SamplingMethod(s.method), n, seed=self.cfg.run.seed, stream="pde/candidates",
            epoch=event, cells=exp.cells, block=self.ctx.block,
        )

    def density(self, residual: np.ndarray) -> np.ndarray:
        """p = |r|^a / mean(|r|^a) + c over all ranks' candidates: [n_c]."""
        a, c = self.settings.exponent, self.settings.offset
        powered = np.abs(residual) ** a
        sums = self.ctx.comm.all_reduce_sum(torch.tensor([powered.sum(), float(powered.size)], dtype=torch.float64))
        mean = float(sums[0]) / max(float(sums[1]), 1.0)
        return powered / mean + c if mean > 0 else np.full_like(powered, 1.0 + c)

    def draw(self, event: int, score: Scorer, count: int) -> np.ndarray:
        """``count`` candidates of ``event`` (over all ranks) drawn from the density without
        replacement; this rank's share: [n, dim]."""
        x = self.candidates(event)
        residual = score({"pde": x})["pde"]
        keys = sampling_keys(self.density(residual), point_uniforms(rng.stream_key(self.cfg.run.seed, "rad", event), x))
        return x[select_top(keys, count, self.ctx.comm)]


class RAD(ResidualDensitySource):
    """Residual-based adaptive distribution: N new collocation points from p at every event."""

    name = "rad"

    def refresh(self, step: int, current: PointSet, score: Scorer) -> PointSet:
        groups = dict(current.groups)
        groups["pde"] = self.draw(self.event(step), score, self.n_target)
        origin = {k: np.arange(v.shape[0], dtype=np.int64) for k, v in groups.items() if k != "pde"}
        return PointSet(groups, origin)

    def describe(self) -> str:
        s = self.settings
        return (f"rad (every {s.every} steps, {s.candidate_factor:g}x candidates, p ∝ |r|^{s.exponent:g}/mean + "
                f"{s.offset:g})")


class RARD(ResidualDensitySource):
    """Residual-based adaptive refinement with distribution: ``add`` points drawn from p are
    added to the collocation set at every event, up to ``max_points`` (default 2 N)."""

    name = "rar_d"

    @property
    def cap(self) -> int:
        return self.settings.max_points or 2 * self.n_target

    def refresh(self, step: int, current: PointSet, score: Scorer) -> PointSet:
        have = int(self.ctx.comm.all_reduce_sum(torch.tensor([float(len(current.groups["pde"]))], dtype=torch.float64)))
        count = min(self.settings.add, self.cap - have)
        origin = {k: np.arange(v.shape[0], dtype=np.int64) for k, v in current.groups.items()}
        if count <= 0:
            return PointSet(dict(current.groups), origin)
        new = self.draw(self.event(step), score, count)
        groups = dict(current.groups)
        groups["pde"] = np.concatenate([current.groups["pde"], new])
        origin["pde"] = np.concatenate([origin["pde"], np.full(new.shape[0], -1, dtype=np.int64)])
        return PointSet(groups, origin)

    def describe(self) -> str:
        s = self.settings
        return f"rar_d (every {s.every} steps, +{s.add} points drawn from p, up to {self.cap})"
