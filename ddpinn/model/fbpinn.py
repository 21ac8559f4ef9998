"""The multilevel FBPINN model.

    u(x) = shift(x) + scale(x) · (1/L) Σ_levels Σ_j ŵ_j(x) · (mean + s · NN_j((x - c_j) / (w_j/2)))

with ŵ_j the partition-of-unity windows of each level (an output may be made of some levels only,
``network.output_levels``: then 1/L and the sum run over its levels). :class:`FBPINN` evaluates this with all
input-derivative jets the problem needs, as three stages that the distributed engine reuses:

1. :meth:`FBPINN.partial_sums`: per level, the held subdomains' windowed outputs, summed into
   an ``[n_eval, J, n_out]`` array (own points, then halo points);
2. :attr:`FBPINN.reduce_partial_sums`: turns that into ``[n_own, J, n_out]`` totals. On one
   process it drops nothing (there are no halo rows); the distributed engine replaces it with
   the halo exchange, which adds neighbours' halo rows into their owners' rows;
3. :meth:`FBPINN.constrain`: the level average and the hard-constraint ansatz.

With finite-difference derivatives (a batch with a stencil) the three stages compute u value-only
at the stencil points, and :meth:`FBPINN.forward` differences them into the jets.

This module never imports torch.distributed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ddpinn.model.activations import Activation, AdaptiveSlope
from ddpinn.model.batch import EvaluationBatch
from ddpinn.model.fourier import FourierFeatures
from ddpinn.model.mlp import StackedMLP

__all__ = ["FBPINN", "own_rows"]


def own_rows(partial: Tensor, batch: EvaluationBatch) -> Tensor:
    """The single-process reduction: the partial sums of the own points are already totals."""
    return partial[: batch.n_own_rows]


class FBPINN(nn.Module):
    """Subdomain networks of every level (the held subset of each) and their combination.

    ``held[l]``: sorted global ids of the subdomains of level l this process holds;
    ``sizes``: layer sizes ``[dim, hidden..., n_out]`` per level; ``fourier``, ``adaptive``:
    Fourier-feature inputs and adaptive activation slopes of every network (None: off).
    """

    def __init__(
        self,
        held: Sequence[np.ndarray],
        sizes: Sequence[Sequence[int]],
        activation: Activation,
        *,
        output_mean: Sequence[float],
        output_scale: Sequence[float],
        seed: int,
        dtype: torch.dtype = torch.float32,
        fourier: FourierFeatures | None = None,
        adaptive: AdaptiveSlope | None = None,
        output_levels: Sequence[Sequence[bool]] | None = None,
    ) -> None:
        super().__init__()
        self.held = [np.asarray(h, dtype=np.int64) for h in held]
        self.nets = nn.ModuleList(
            StackedMLP(len(ids), level_sizes, activation, dtype, fourier=fourier, adaptive=adaptive)
            for ids, level_sizes in zip(self.held, sizes)
        )
        for level, (net, ids) in enumerate(zip(self.nets, self.held)):
            net.initialise(seed, level, ids)
        self.register_buffer("output_mean", torch.as_tensor(output_mean, dtype=dtype).reshape(-1))
        self.register_buffer("output_scale", torch.as_tensor(output_scale, dtype=dtype).reshape(-1))
        # Which levels make up each output ([n_levels, n_out] of 0/1), and how many ([n_out]):
        # from the config, so not checkpointed. None: all of them (no masking in the step).
        mask = None if output_levels is None else torch.as_tensor(output_levels, dtype=dtype)
        self.register_buffer("output_levels", mask, persistent=False)
        self.register_buffer(
            "levels_per_output",
            torch.full_like(self.output_scale, len(self.nets)) if mask is None else mask.sum(0),
            persistent=False,
        )
        self.reduce_partial_sums: Callable[[Tensor, EvaluationBatch], Tensor] = own_rows

    @property
    def n_levels(self) -> int:
        return len(self.nets)

    @property
    def n_outputs(self) -> int:
        return self.nets[0].sizes[-1]

    def partial_sums(self, batch: EvaluationBatch) -> Tensor:
        """Σ over held subdomains of ŵ_j · NN_j and its jets: [n_eval, J, n_out] (before un-normalisation;
        J = len(batch.evaluated_spec))."""
        spec = batch.evaluated_spec
        n_jets, n_out = len(spec), self.n_outputs
        total = batch.x.new_zeros(batch.n_eval + 1, n_jets * n_out)
        for level, (net, cov) in enumerate(zip(self.nets, batch.levels)):
            if cov.n_pairs == 0:
                continue
            out = net.jets(cov.x_norm, cov.inv_half_width, spec, cov.rows)  # [S, J, n_out, P]
            if self.output_levels is not None:
                out = out * self.output_levels[level].view(1, 1, n_out, 1)
            # Product rule with the (parameter-free) window jets, as one precomputed linear map.
            windowed = (cov.window_product.unsqueeze(3) * out.unsqueeze(1)).sum(2)  # [S, J, n_out, P]
            flat = windowed.permute(0, 3, 1, 2).reshape(-1, n_jets * n_out)
            total = total.index_add(0, cov.point_index.reshape(-1), flat)
        total = total[: batch.n_eval].view(batch.n_eval, n_jets, n_out)
        # Fixed subdomains (a schedule's frozen ones): their constant sums, computed once per phase.
        return total if batch.fixed_sums is None else total + batch.fixed_sums

    def constrain(self, totals: Tensor, batch: EvaluationBatch) -> Tensor:
        """Un-normalisation, level average and hard constraint, with jets: [n_own_rows, J, n_out].

        Every subdomain output is un-normalised as ``mean + s · NN``. Each level's windows sum to
        one, so after the level average the means contribute ``mean`` to the value row only;
        with the hard constraint u = shift + scale · v this is ``scale``'s jets times ``mean``.
        """
        product = batch.constraint_product  # [n, J, J, n_out]
        scaled = (product * totals.unsqueeze(1)).sum(2) * (self.output_scale / self.levels_per_output)
        return batch.constraint_shift + product[:, :, 0] * self.output_mean + scaled

    def forward(self, batch: EvaluationBatch) -> Tensor:
        """u and its jets at the own points: [n_own, J, n_out] (J = len(batch.spec))."""
        u = self.constrain(self.reduce_partial_sums(self.partial_sums(batch), batch), batch)
        return u if batch.stencil is None else batch.stencil.apply(u[:, 0])
