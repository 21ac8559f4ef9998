"""The differentiable halo exchange, executed every step.

Forward (reduce-add, evaluator -> owner): the partial sums a rank computed at its halo points are
sent to the points' owners and added into their rows. Backward (the adjoint, owner -> evaluator):
the gradients of those owned rows are sent back and become the gradients of the halo rows. Both
directions are one batched neighbour exchange; every rank takes part in both, every step.

Both directions are torch custom operators (``ddpinn::halo_reduce`` and ``ddpinn::halo_scatter``,
each the other's adjoint), so torch.compile keeps the training step in one graph around them
instead of breaking it in two (a break costs extra graph launches and guards every step). The
operators see the plan as its index tensors and the communicator as a registered integer key:
neither is a tensor, and keying on the plan object itself would recompile at every resampling.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.exchange.plan import ExchangePlan

__all__ = ["halo_exchange", "halo_exchange_adjoint", "apply_halo_exchange"]

_COMMUNICATORS: weakref.WeakValueDictionary[int, Communicator] = weakref.WeakValueDictionary()
_next_key = itertools.count()


def _register(comm: Communicator) -> int:
    for key, known in _COMMUNICATORS.items():
        if known is comm:
            return key
    key = next(_next_key)
    _COMMUNICATORS[key] = comm
    return key


def _rows(plan: ExchangePlan) -> tuple[list[int], list[Tensor], list[Tensor]]:
    """The plan as operator arguments: neighbours, and per neighbour its halo and owned rows
    (both maps of a plan list every neighbour)."""
    neighbours = plan.neighbours
    return neighbours, [plan.halo_rows[q] for q in neighbours], [plan.owned_rows[q] for q in neighbours]


def _reduce(partial: Tensor, n_own: int, neighbours: Sequence[int], halo: Sequence[Tensor], owned: Sequence[Tensor],
            comm: Communicator) -> Tensor:
    """[n_eval, ...] partial sums -> [n_own, ...] totals."""
    rest = tuple(partial.shape[1:])
    sends = {q: partial[rows] for q, rows in zip(neighbours, halo)}
    shapes = {q: (int(rows.numel()), *rest) for q, rows in zip(neighbours, owned)}
    received = comm.exchange(sends, shapes, partial.dtype)
    totals = partial[:n_own].clone()
    for q, rows in zip(neighbours, owned):
        if rows.numel():
            totals.index_add_(0, rows, received[q])
    return totals


def _scatter(grad_totals: Tensor, n_eval: int, neighbours: Sequence[int], halo: Sequence[Tensor],
             owned: Sequence[Tensor], comm: Communicator) -> Tensor:
    """[n_own, ...] gradients of the totals -> [n_eval, ...] gradients of the partial sums."""
    rest = tuple(grad_totals.shape[1:])
    sends = {q: grad_totals[rows] for q, rows in zip(neighbours, owned)}
    shapes = {q: (int(rows.numel()), *rest) for q, rows in zip(neighbours, halo)}
    received = comm.exchange(sends, shapes, grad_totals.dtype)
    grad = grad_totals.new_zeros((n_eval, *rest))
    grad[: grad_totals.shape[0]] = grad_totals
    for q, rows in zip(neighbours, halo):
        if rows.numel():
            grad[rows] = received[q]
    return grad


@torch.library.custom_op("ddpinn::halo_reduce", mutates_args=())
def _halo_reduce(
    partial: Tensor, n_own: int, neighbours: list[int], halo: list[Tensor], owned: list[Tensor], comm_key: int
) -> Tensor:
    return _reduce(partial.contiguous(), n_own, neighbours, halo, owned, _COMMUNICATORS[comm_key])


@torch.library.custom_op("ddpinn::halo_scatter", mutates_args=())
def _halo_scatter(
    grad_totals: Tensor, n_eval: int, neighbours: list[int], halo: list[Tensor], owned: list[Tensor], comm_key: int
) -> Tensor:
    return _scatter(grad_totals.contiguous(), n_eval, neighbours, halo, owned, _COMMUNICATORS[comm_key])


@_halo_reduce.register_fake
def _(partial, n_own, neighbours, halo, owned, comm_key):
    return partial.new_empty((n_own, *partial.shape[1:]))


@_halo_scatter.register_fake
def _(grad_totals, n_eval, neighbours, halo, owned, comm_key):
    return grad_totals.new_empty((n_eval, *grad_totals.shape[1:]))


def _save_args(ctx, inputs, output) -> None:
    tensor, _, ctx.neighbours, ctx.halo, ctx.owned, ctx.comm_key = inputs
    ctx.n_in = tensor.shape[0]


def _no_grads(ctx) -> tuple:
    """None for every non-differentiable argument, shaped like the arguments (lists as lists)."""
    return None, None, [None] * len(ctx.halo), [None] * len(ctx.owned), None


def _reduce_backward(ctx, grad: Tensor):
    return _halo_scatter(grad, ctx.n_in, ctx.neighbours, ctx.halo, ctx.owned, ctx.comm_key), *_no_grads(ctx)


def _scatter_backward(ctx, grad: Tensor):
    return _halo_reduce(grad, ctx.n_in, ctx.neighbours, ctx.halo, ctx.owned, ctx.comm_key), *_no_grads(ctx)


_halo_reduce.register_autograd(_reduce_backward, setup_context=_save_args)
_halo_scatter.register_autograd(_scatter_backward, setup_context=_save_args)


def halo_exchange(partial: Tensor, plan: ExchangePlan, comm: Communicator) -> Tensor:
    """Totals at own points ([n_own, ...]) from partial sums at own + halo points ([n_eval, ...])."""
    neighbours, halo, owned = _rows(plan)
    return _halo_reduce(partial, plan.n_own, neighbours, halo, owned, _register(comm))


def halo_exchange_adjoint(grad_totals: Tensor, plan: ExchangePlan, comm: Communicator) -> Tensor:
    """The adjoint map, exposed for the adjoint test: ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ over all ranks."""
    neighbours, halo, owned = _rows(plan)
    return _halo_scatter(grad_totals, plan.n_eval, neighbours, halo, owned, _register(comm))


def apply_halo_exchange(model: FBPINN, comm: Communicator) -> None:
    """Make the model reduce its partial sums through the halo exchange of each batch's plan."""
    key = _register(comm)

    def reduce(partial: Tensor, batch: EvaluationBatch) -> Tensor:
        neighbours, halo, owned = _rows(batch.exchange)
        if torch.is_grad_enabled() and not partial.requires_grad:
            # A rank whose subdomains are all fixed or off in a schedule phase has no parameter
            # in its partial sums, yet its neighbours' backward waits for its half of the
            # adjoint exchange: keep the exchange in its graph.
            partial = partial.detach().requires_grad_()
        return _halo_reduce(partial, batch.exchange.n_own, neighbours, halo, owned, key)

    model.reduce_partial_sums = reduce
