"""Optimiser phases: Adam for ``train.steps``, then L-BFGS for ``lbfgs.steps``.

Defines :class:`AdamPhase`, :class:`LBFGSPhase` and :class:`PhasePlan` (which phase runs a given
step). A phase takes one step on a batch through the :class:`~ddpinn.train.engine.LossEngine` and
owns its optimiser, whose state the checkpoint stores by parameter name (``level_1/W0``). The
weighting's own trainable state (self-adaptive weights) is stepped by the weighting, inside the
engine; L-BFGS freezes it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ddpinn.config import Config
from ddpinn.model.batch import EvaluationBatch
from ddpinn.schedule import SubdomainSchedule
from ddpinn.train.diagnose import FiniteGuard
from ddpinn.train.engine import LossEngine
from ddpinn.train.lbfgs import LBFGS, LBFGSState
from ddpinn.train.masked_adam import MaskedAdam
from ddpinn.train.schedules import learning_rate

__all__ = ["AdamPhase", "LBFGSPhase", "PhasePlan"]


class AdamPhase:
    """Adam over ``params``: torch's fused Adam for an all-active schedule (the plain run), else
    :class:`~ddpinn.train.masked_adam.MaskedAdam`, which moves only the active subdomains' rows
    (with the schedule's per-level learning-rate factors); the trainer's points tell it the roles
    of each phase (:meth:`set_roles`)."""

    name = "adam"

    def __init__(self, engine: LossEngine, params: list[Tensor], cfg: Config, guard: FiniteGuard,
                 schedule: SubdomainSchedule | None = None) -> None:
        o = cfg.optimizer
        self.engine, self.cfg, self.guard = engine, cfg, guard
        self.fused = params[0].device.type in ("cpu", "cuda")
        """The fused kernel skips an update on a device flag; other devices check on the host."""
        if schedule is None or schedule.all_active:
            self.optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=self.fused)
        else:
            self.optimizer = MaskedAdam(params, engine.model, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                        level_factors=schedule.level_lr_factors())

    def set_roles(self, roles: list[np.ndarray]) -> None:
        """The roles (per level, [n_subdomains] by global id) from this step on."""
        if isinstance(self.optimizer, MaskedAdam):
            self.optimizer.set_roles(roles)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, step: int, batch: EvaluationBatch) -> Tensor:
        """Adam step ``step`` (0-based); returns the global terms before the update."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg.optimizer.lr, self.cfg.optimizer.schedule, step, self.cfg.train.steps)
        self.engine.weighting.before_step(step, lambda: self.engine.term_gradient_norms(batch))
        clip = self.cfg.optimizer.clip_norm
        result = self.engine.loss_and_gradients(batch, step, with_norm=clip is not None)
        # A non-finite loss never reaches the parameters: the fused kernel skips the update on the
        # guard's device flag (no host synchronisation; the trainer reads the flag at its logging
        # and checkpoint steps), or the host checks before updating.
        if self.fused:
            self.optimizer.found_inf = self.guard.watch(result.terms, step + 1)
        else:
            self.guard.check(result.terms, step + 1, batch)
        if clip is not None:
            factor = torch.clamp(clip / (result.grad_norm + 1e-12), max=1.0)
            for p in self.optimizer.param_groups[0]["params"]:
                if p.grad is not None:
                    p.grad.mul_(factor)
        self.optimizer.step()
        return result.terms


class LBFGSPhase:
    name = "lbfgs"

    def __init__(self, engine: LossEngine, named: Mapping[str, Tensor], dot, cfg: Config, guard: FiniteGuard) -> None:
        self.engine, self.cfg, self.guard = engine, cfg, guard
        self.optimizer = LBFGS(named, dot, cfg.lbfgs.history, cfg.lbfgs.lr)

    @property
    def state(self) -> LBFGSState:
        return self.optimizer.state

    @state.setter
    def state(self, value: LBFGSState) -> None:
        self.optimizer.state = value

    def step(self, step: int, batch: EvaluationBatch) -> Tensor:
        self.engine.weighting.frozen = True  # a line search needs one fixed loss
        last: list[Tensor] = []

        def closure() -> float:
            terms = self.engine.loss_and_gradients(batch, step).terms
            last[:] = [terms]
            return float(terms.sum())

        self.optimizer.step(closure)
        self.guard.check(last[0], step + 1, batch)
        return last[0]


class PhasePlan:
    """Adam for steps [0, train.steps), L-BFGS after."""

    def __init__(self, adam: AdamPhase, lbfgs: LBFGSPhase, adam_steps: int) -> None:
        self.adam, self.lbfgs, self.adam_steps = adam, lbfgs, adam_steps

    def at(self, step: int) -> AdamPhase | LBFGSPhase:
        return self.adam if step < self.adam_steps else self.lbfgs
