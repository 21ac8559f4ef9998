"""Why the loss is not finite before any parameter update: the problem's definition, located.

Defines :func:`initial_non_finite_cause`. At step 1 the parameters are the finite initial ones,
so a NaN or infinity comes from the problem (its hard-constraint ansatz or a residual), never
from the learning rate; this names which, and where.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.comm import Communicator
from ddpinn.train.objective import Objective

__all__ = ["initial_non_finite_cause"]


def _bad_points(values: Tensor, x: Tensor) -> tuple[int, list[float] | None]:
    """How many points (rows of ``values``) hold a non-finite entry, and the first one's x."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    count = int(bad.sum())
    return count, (x[bad][0].tolist() if count else None)


def _local_cause(model, objective: Objective, batch: EvaluationBatch) -> str | None:
    problem = type(objective.problem).__name__
    for what, jets in (("scale", batch.constraint_product), ("shift", batch.constraint_shift)):
        count, x = _bad_points(jets, batch.x)
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
