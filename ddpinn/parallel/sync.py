"""Gradient and scalar synchronisation: the one global all-reduce per step.

Defines :class:`GradientSync`. Replicated levels' gradients are per-rank partial sums (each rank
sees only its own points), so they are summed over ranks; partitioned levels' gradients are
already complete on their owner (halo contributions arrive through the exchange's adjoint).
The loss terms and, when clipping, the partitioned part of the squared gradient norm ride in
the same buffer, so a step costs exactly one all-reduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["GradientSync", "SyncResult"]


@dataclass(frozen=True)
class SyncResult:
    """What one step's all-reduce gives back (the replicated gradients are reduced in place)."""

    terms: Tensor
    """The global loss terms: [n_terms]."""
    grad_norm: Tensor | None
    """The global gradient norm, a 0-d tensor, when asked for (gradient clipping); else None."""


class GradientSync:
    """``params``: the optimiser's parameters (the model's, then ``extra_replicated`` ones such
    as trainable problem parameters, which every rank holds)."""

    def __init__(
        self, model: FBPINN, layout: ParallelLayout, comm: Communicator, extra_replicated: Sequence[Tensor] = ()
    ) -> None:
        self.comm = comm
        self.params = [*model.parameters(), *extra_replicated]
        replicated_ids = {
            id(p) for level, net in enumerate(model.nets) if not layout.is_partitioned(level) for p in net.parameters()
        } | {id(p) for p in extra_replicated}
        self.replicated_mask = [id(p) in replicated_ids for p in self.params]
        self.replicated = [p for p, r in zip(self.params, self.replicated_mask) if r]
        self.partitioned = [p for p, r in zip(self.params, self.replicated_mask) if not r]

    def reduce(self, scalars: Tensor, with_norm: bool = False) -> SyncResult:
        """All-reduce replicated gradients (in place) and the loss terms ``scalars`` ([k]); the
        global gradient norm too if ``with_norm``."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.replicated]
        partitioned_sq = None
        if with_norm:
            # Sums start from a device zero: a rank without partitioned gradients makes no host tensor.
            zero = scalars.new_zeros(())
            partitioned_sq = sum((p.grad.detach() ** 2).sum() for p in self.partitioned if p.grad is not None)
            partitioned_sq = (partitioned_sq + zero).to(scalars.dtype).reshape(1)
        pieces = [g.reshape(-1).to(scalars.dtype) for g in grads] + [scalars]
        if partitioned_sq is not None:
            pieces.append(partitioned_sq)
        flat = self.comm.all_reduce_sum(torch.cat(pieces))
        offset = 0
        for p, g in zip(self.replicated, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n
        total_scalars = flat[offset : offset + scalars.numel()]
        part_sq = flat[offset + scalars.numel() :] if partitioned_sq is not None else None
        norm = None
        if with_norm:
            replicated_sq = sum(((p.grad.detach() ** 2).sum() for p in self.replicated if p.grad is not None), zero)
            norm = (part_sq.sum() + replicated_sq).sqrt()
        return SyncResult(terms=total_scalars, grad_norm=norm)

    def dot(self, a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
        """Global inner product of two parameter-shaped vectors (replicated entries counted once)."""
        local = sum((x * y).sum() for x, y, r in zip(a, b, self.replicated_mask) if not r)
        shared = sum((x * y).sum() for x, y, r in zip(a, b, self.replicated_mask) if r)
        local = torch.as_tensor(local, dtype=torch.float64).reshape(1)
        if self.comm.world_size > 1:
            local = self.comm.all_reduce_sum(local.to(self.params[0].device)).cpu()
        return float(local.sum()) + float(shared)
