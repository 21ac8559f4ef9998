"""The differentiable halo exchange, executed every step.

Forward (reduce-add, evaluator -> owner): the partial sums a rank computed at its halo points are
sent to the points' owners and added into their rows. Backward (the adjoint, owner -> evaluator):
the gradients of those owned rows are sent back and become the gradients of the halo rows. Both
directions are one batched neighbour exchange; every rank takes part in both, every step.

``_forward(plan, comm, x)`` and ``_backward(plan, comm, g)`` are the pure primitives; the
autograd Function only wires them together, and :func:`halo_exchange` is the public entry.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.exchange.plan import ExchangePlan

__all__ = ["halo_exchange", "halo_exchange_adjoint", "apply_halo_exchange"]


def _forward(plan: ExchangePlan, comm: Communicator, partial: Tensor) -> Tensor:
    """[n_eval, ...] partial sums -> [n_own, ...] totals."""
    rest = tuple(partial.shape[1:])
    sends = {q: partial[rows] for q, rows in plan.halo_rows.items()}
    shapes = {r: (int(rows.numel()), *rest) for r, rows in plan.owned_rows.items()}
    received = comm.exchange(sends, shapes, partial.dtype)
    totals = partial[: plan.n_own].clone()
    for r, rows in plan.owned_rows.items():
        if rows.numel():
            totals.index_add_(0, rows, received[r])
    return totals


def _backward(plan: ExchangePlan, comm: Communicator, grad_totals: Tensor) -> Tensor:
    """[n_own, ...] gradients of the totals -> [n_eval, ...] gradients of the partial sums."""
    rest = tuple(grad_totals.shape[1:])
    sends = {r: grad_totals[rows] for r, rows in plan.owned_rows.items()}
    shapes = {q: (int(rows.numel()), *rest) for q, rows in plan.halo_rows.items()}
    received = comm.exchange(sends, shapes, grad_totals.dtype)
    grad = grad_totals.new_zeros((plan.n_eval, *rest))
    grad[: plan.n_own] = grad_totals
    for q, rows in plan.halo_rows.items():
        if rows.numel():
            grad[rows] = received[q]
    return grad


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(partial: Tensor, plan: ExchangePlan, comm: Communicator) -> Tensor:  # type: ignore[override]
        return _forward(plan, comm, partial)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, ctx.plan, ctx.comm = inputs

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _backward(ctx.plan, ctx.comm, grad.contiguous()), None, None


@torch.compiler.disable
def halo_exchange(partial: Tensor, plan: ExchangePlan, comm: Communicator) -> Tensor:
    """Totals at own points ([n_own, ...]) from partial sums at own + halo points ([n_eval, ...])."""
    return _HaloExchange.apply(partial, plan, comm)


def halo_exchange_adjoint(grad_totals: Tensor, plan: ExchangePlan, comm: Communicator) -> Tensor:
    """The adjoint map, exposed for the adjoint test: ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ over all ranks."""
    return _backward(plan, comm, grad_totals)


def apply_halo_exchange(model: FBPINN, comm: Communicator) -> None:
    """Make the model reduce its partial sums through the halo exchange of each batch's plan."""

    def reduce(partial: Tensor, batch: EvaluationBatch) -> Tensor:
        return halo_exchange(partial, batch.exchange, comm)

    model.reduce_partial_sums = reduce
