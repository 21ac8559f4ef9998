"""A non-finite loss, stopped before it reaches the parameters and explained.

Defines :class:`NonFiniteLossError`, :class:`FiniteGuard` (the check every optimiser phase runs
on the global terms before updating) and :func:`initial_non_finite_cause`. At step 1 the
parameters are the finite initial ones, so a NaN or infinity comes from the problem (its
hard-constraint ansatz or a residual), never from the learning rate; this names which, and
where. Later, the message names the first subdomains whose parameters or gradients broke.

Adam's check costs no host synchronisation: the guard keeps a flag on the device that the
fused optimiser reads in its kernel (as ``torch.amp.GradScaler``'s ``found_inf``) and the trainer
reads it on the host only where the host needs the values anyway (logging, evaluation,
checkpoints, new points, the switch to L-BFGS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.comm import Communicator
from ddpinn.train.objective import Objective

__all__ = ["FiniteGuard", "NonFiniteLossError", "initial_non_finite_cause"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised on every rank at the same step."""


def _bad_points(values: Tensor, x: Tensor) -> tuple[int, list[float] | None]:
    """How many points (rows of ``values``) hold a non-finite entry, and the first one's x."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    count = int(bad.sum())
    return count, (x[bad][0].tolist() if count else None)


def _local_cause(model, objective: Objective, batch: EvaluationBatch) -> str | None:
    problem = type(objective.problem).__name__
    # The constraint's jets are at the evaluated own rows: the stencil points under finite differences.
    rows_x = batch.x if batch.stencil is None else torch.from_numpy(batch.stencil.points)
    for what, jets in (("scale", batch.constraint_product), ("shift", batch.constraint_shift)):
        count, x = _bad_points(jets, rows_x.to(jets.device))
        if count:
            return (f"the hard-constraint ansatz ({problem}.hard_constraint, its {what}) is not finite at {count} "
                    f"point(s), e.g. x = {x}")
    with torch.no_grad():
        u = model(batch)
        count, x = _bad_points(u, batch.x)
        if count:
            return (f"the model output is not finite at {count} point(s) although every parameter is, e.g. "
                    f"x = {x}; check network.output_mean/output_scale and {problem}'s constraint")
        for name, squared in objective.squared_residuals(u, batch).items():
            count, x = _bad_points(squared, batch.x[batch.groups[name]])
            if count:
                where = f"{problem}.residual" if name == "pde" else f"the residual of {problem}'s constraint {name!r}"
                return f"{where} is not finite at {count} point(s) where the model output is finite, e.g. x = {x}"
    return None


def initial_non_finite_cause(model, objective: Objective, batch: EvaluationBatch, comm: Communicator) -> str:
    """A sentence naming the first non-finite stage (ansatz, model output, a term's residual) and
    a point where it happens, over all ranks (collective: every rank must call it)."""
    found = [c for c in comm.allgather_object(_local_cause(model, objective, batch)) if c]
    if not found:
        return "no non-finite value found at the points on a second evaluation (non-deterministic problem code?)"
    return found[0]


class FiniteGuard:
    """Stops the run with :class:`NonFiniteLossError` on every rank (the terms are global, so all
    ranks agree) when a term is not finite, without any non-finite update reaching the
    parameters; ``step`` is 1-based. Two ways to use it:

    * :meth:`check` reads the terms on the host now and raises before the caller updates (L-BFGS,
      whose line search reads the loss on the host anyway, and optimisers that cannot skip an
      update on a device flag).
    * :meth:`watch` folds the step's finiteness into a flag on the device, sticky: from the first
      non-finite step on, it is 1 and the fused Adam kernel skips every update (parameters,
      moments and step count stay as they were; the ``found_inf`` of ``torch.amp.GradScaler``).
      :meth:`raise_if_tripped` reads the flag, one host synchronisation, and raises about the
      first non-finite step; the trainer calls it before anything reads the model on the host.
    """

    def __init__(self, model, objective: Objective, comm: Communicator, checkpoint_path: Path) -> None:
        self.model, self.objective, self.comm, self.checkpoint_path = model, objective, comm, checkpoint_path
        self._tripped: Tensor | None = None
        """0-d float32 on the terms' device: 1 from the first non-finite step on, else 0."""
        self._first_step: Tensor | None = None
        """0-d int64: the first non-finite step (1-based), 0 while there is none."""
        self._first_terms: Tensor | None = None
        """[n_terms]: the terms of that step."""

    def check(self, terms: Tensor, step: int, batch: EvaluationBatch) -> None:
        """Raise now if a term of ``terms`` ([n_terms], global) is not finite."""
        if not bool(torch.isfinite(terms).all()):
            self._raise(terms, step, step, batch)

    def watch(self, terms: Tensor, step: int) -> Tensor:
        """Record the finiteness of step ``step``'s terms on the device, without waiting for them;
        returns the sticky flag (0-d float32, 1 = skip this update), for ``optimizer.found_inf``."""
        if self._tripped is None:
            self._tripped = torch.zeros((), dtype=torch.float32, device=terms.device)
            self._first_step = torch.zeros((), dtype=torch.int64, device=terms.device)
            self._first_terms = torch.zeros_like(terms)
        bad = torch.isfinite(terms).all().logical_not()
        first = bad & (self._tripped == 0)
        self._first_step = torch.where(first, step, self._first_step)
        self._first_terms = torch.where(first, terms, self._first_terms)
        self._tripped = torch.maximum(self._tripped, bad.to(torch.float32))
        return self._tripped

    def raise_if_tripped(self, step: int, batch: EvaluationBatch) -> None:
        """Raise about the first non-finite step :meth:`watch` saw, if any; ``step``: the step just
        taken. ``batch``: the current batch (the trainer calls this before the points change, so
        it is the non-finite step's)."""
        if self._tripped is None or not bool(self._tripped):
            return
        self._raise(self._first_terms, int(self._first_step), step, batch)

    def _raise(self, terms: Tensor, step: int, noticed: int, batch: EvaluationBatch) -> None:
        bad_terms = [n for n, v in zip(self.objective.names, terms.tolist()) if not np.isfinite(v)]
        skipped = (
            f" (read at step {noticed}: the check is read on the host at logging, evaluation and checkpoint "
            f"steps; steps {step}..{noticed} made no update)" if noticed != step else ""
        )
        if step == 1:
            cause = initial_non_finite_cause(self.model, self.objective, batch, self.comm)
            raise NonFiniteLossError(
                f"non-finite loss at step 1, before any parameter update, in term(s) {bad_terms}: {cause}. "
                f"This comes from the problem's definition, not from training (a division by zero, or a log or "
                f"square root of a negative number, at those points?); no parameter was updated{skipped}"
            )
        saved = (
            f"the last checkpoint ({self.checkpoint_path}, verified when written) is from before this step"
            if self.checkpoint_path.exists()
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"non-finite loss at step {step} in term(s) {bad_terms}; {self._non_finite_subdomains()}. Parameters "
            f"were not updated{skipped} and {saved}; lower optimizer.lr or set optimizer.clip_norm"
        )

    def _non_finite_subdomains(self) -> str:
        local = []
        for level, net in enumerate(self.model.nets):
            for p in net.parameters():
                for tensor, what in ((p, "parameter"), (p.grad, "gradient")):
                    if tensor is None or tensor.numel() == 0:
                        continue
                    bad = ~torch.isfinite(tensor.detach()).reshape(tensor.shape[0], -1).all(dim=1)
                    for i in torch.nonzero(bad).reshape(-1).tolist()[:3]:
                        local.append(f"level {level + 1} subdomain {int(self.model.held[level][i])} ({what})")
        found = sorted(set(sum(self.comm.allgather_object(local), [])))
        return "first non-finite: " + ", ".join(found[:6]) if found else "parameters and gradients are finite"
