"""Adam that updates only the rows of a schedule's ACTIVE subdomains.

Defines :class:`MaskedAdam`. The subdomain networks of a level are stacked, ``[n_held, ...]``
per parameter; a row whose subdomain is FIXED or OFF keeps its value *and* its Adam moments,
and each row counts its own steps, so the bias correction of a subdomain starts when it first
becomes active (as if it had its own optimiser from then on). Vectorised over rows: one masked
update per parameter tensor, no Python loop over subdomains, no host synchronisation (the masks
are put on the device once per schedule phase; the finiteness flag is read on the device).

The state follows ``torch.optim.Adam``'s names (``exp_avg``, ``exp_avg_sq``, ``step``), with
``step`` a per-row float tensor ``[n_held]`` (0-d for the problem's own parameters), so the
checkpoint stores it by parameter name and global subdomain id like the moments. Used by
:class:`~ddpinn.train.phases.AdamPhase` when the schedule is not all-active.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ddpinn.model.fbpinn import FBPINN
from ddpinn.schedule import Role

__all__ = ["MaskedAdam"]


class MaskedAdam:
    """Adam over ``params`` where the parameters of ``model.nets[l]`` update only in the rows of
    active subdomains (:meth:`set_roles`), with learning rate ``lr × level_factors[l]``; other
    parameters (the problem's trainable ones) update every step with ``lr``.

    ``found_inf``: a 0-d device flag (the :class:`~ddpinn.train.diagnose.FiniteGuard`'s); while it
    is non-zero no row moves, nor do its moments and step counts.
    """

    def __init__(self, params: Sequence[Tensor], model: FBPINN, *, lr: float, betas: tuple[float, float],
                 eps: float, level_factors: Sequence[float]) -> None:
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.betas, self.eps = betas, eps
        self.level_of = {id(p): level for level, net in enumerate(model.nets) for p in net.parameters()}
        self.factors = [float(f) for f in level_factors]
        self.held = model.held
        self.state: dict[Tensor, dict[str, Tensor]] = {}
        self.found_inf: Tensor | None = None
        self.active: list[Tensor] = [torch.ones(len(ids), dtype=torch.bool) for ids in model.held]
        """Per level: [n_held] bool on the parameters' device, the rows that update."""

    def set_roles(self, roles: Sequence[np.ndarray]) -> None:
        """Roles (per level, [n_subdomains] by global id) of the phase starting now."""
        device = self.param_groups[0]["params"][0].device
        self.active = [torch.from_numpy(level_roles[ids] == Role.ACTIVE).to(device)
                       for level_roles, ids in zip(roles, self.held)]

    def zero_grad(self) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        beta1, beta2 = self.betas
        for p in self.param_groups[0]["params"]:
            level = self.level_of.get(id(p))
            rows = p.shape[:1] if level is not None else ()
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": torch.zeros(rows, dtype=p.dtype, device=p.device),
                                         "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            elif state["step"].shape != rows:  # restored from a checkpoint of the plain Adam: one count for all
                state["step"] = state["step"].to(p).expand(rows).clone()
            moves = self.active[level] if level is not None else torch.ones((), dtype=torch.bool, device=p.device)
            if self.found_inf is not None:
                moves = moves & (self.found_inf == 0)
            mask = moves.reshape(*moves.shape, *(1,) * (p.dim() - moves.dim()))
            # No gradient: no point of this rank met the parameter this phase (a rank whose
            # subdomains are all fixed or off). Its active rows still take their step with a zero
            # gradient, as they do on one rank, and its state exists for the checkpoint.
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            step = state["step"] + moves.to(p.dtype)
            m.copy_(torch.where(mask, torch.lerp(m, grad, 1 - beta1), m))
            v.copy_(torch.where(mask, v * beta2 + (1 - beta2) * grad * grad, v))
            state["step"] = step
            # Bias corrections per row; rows that never moved have step 0 and are masked below.
            counted = step.clamp(min=1).reshape(mask.shape)
            correction1 = 1 - beta1**counted
            correction2_sqrt = torch.sqrt(1 - beta2**counted)
            rate = lr * (self.factors[level] if level is not None else 1.0)
            update = (rate / correction1) * m / (v.sqrt() / correction2_sqrt + self.eps)
            p.sub_(torch.where(mask, update, torch.zeros((), dtype=p.dtype, device=p.device)))
