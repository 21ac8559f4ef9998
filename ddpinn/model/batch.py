"""The evaluation batch: everything the model needs at one point set, built once per sampling.

Defines :class:`EvaluationBatch` and :func:`build_batch`. The batch holds the process's own
points (grouped by loss term), each level's :class:`~ddpinn.geometry.LevelCoverage` and the
jets of the hard-constraint factors. Windows, normalised inputs and constraint factors depend
only on the points, so they are computed here, in float64, and reused by every training step.

Distributed runs evaluate partitioned levels on the own points followed by halo points (points
owned by neighbours that the process's subdomains cover); replicated levels use own points only.
Rows ``[0, n_own)`` of the partial-sum array are own points, ``[n_own, n_eval)`` halo points.

With finite-difference derivatives (``model.derivatives: fd``) the batch carries a
:class:`~ddpinn.model.finite_difference.Stencil`: the evaluated own rows are then the stencil
points of the own points (``n_own_rows`` of them), evaluated value-only, and the model maps their
values to the jets at the own points. ``x``, ``groups``, ``data`` and ``global_counts`` always
describe the own points the loss sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ddpinn.geometry import Decomposition, LevelCoverage, Window, cover_level
from ddpinn.geometry.coverage import product_matrix
from ddpinn.jets import JetSpec, pointwise_jets
from ddpinn.model.finite_difference import Stencil
from ddpinn.problems.base import Problem, as_columns

__all__ = ["EvaluationBatch", "build_batch", "constraint_jets", "select_rows"]


@dataclass(frozen=True, eq=False)
class EvaluationBatch:
    """Model inputs for one point set on one process.

    x: [n_own, dim] own points (run dtype). groups: loss term -> rows of x.
    levels: one coverage per level (empty coverage where the process holds none of it).
    constraint_product: [n_own_rows, J_e, J_e, n_out] the product rule with the hard constraint's
        scale factor as a linear map on jets (like the window product); constraint_shift:
        [n_own_rows, J_e, n_out] jets of its shift (identity and zero without a hard constraint);
        J_e = len(evaluated_spec).
    spec: the jets the model returns at the own points; stencil: the finite-difference stencil
        of the own points (None: exact jets).
    n_eval: rows of the partial-sum array (own rows + halo points). global_counts: points per group
    over all processes (the loss normaliser). exchange: the halo exchange plan, None on one process.
    fixed_sums: [n_eval, J, n_out] the partial sums of the subdomains a schedule holds fixed
    (constant while they are fixed, computed once per schedule phase without gradient; ``levels``
    then cover the active subdomains only), or None.
    """

    x: Tensor
    groups: dict[str, slice]
    levels: tuple[LevelCoverage, ...]
    constraint_product: Tensor
    constraint_shift: Tensor
    spec: JetSpec
    n_eval: int
    global_counts: dict[str, int]
    exchange: object | None = None
    data: dict[str, Tensor] = field(default_factory=dict)
    fixed_sums: Tensor | None = None
    stencil: Stencil | None = None

    @property
    def n_own(self) -> int:
        return self.x.shape[0]

    @property
    def n_own_rows(self) -> int:
        """Rows of the partial-sum array evaluated for the own points: the own points, or their
        stencil points with finite differences."""
        return self.n_own if self.stencil is None else self.stencil.n_points

    @property
    def evaluated_spec(self) -> JetSpec:
        """The jets the networks compute: ``spec``, or the value only with finite differences."""
        return self.spec if self.stencil is None else self.stencil.value_spec

    @property
    def n_pairs(self) -> int:
        return sum(c.n_pairs for c in self.levels)


def constraint_jets(problem: Problem, x: Tensor, spec: JetSpec) -> tuple[Tensor, Tensor]:
    """Jets of the hard-constraint factors at ``x``: (scale, shift), each [n, J, n_out], float64."""
    n_out = len(problem.outputs)
    x64 = x.detach().to(torch.float64)

    def factor(which: str):
        def fn(xx: Tensor) -> Tensor:
            hc = problem.hard_constraint(xx)
            if hc is None:
                return as_columns(1.0 if which == "scale" else 0.0, xx, n_out) + 0 * xx[:, :1]
            return as_columns(getattr(hc, which), xx, n_out) + 0 * xx[:, :1]

        return fn

    return pointwise_jets(factor("scale"), x64, spec), pointwise_jets(factor("shift"), x64, spec)


def build_batch(
    problem: Problem,
    decomposition: Decomposition,
    window: Window,
    spec: JetSpec,
    groups: Mapping[str, np.ndarray],
    *,
    held: Sequence[np.ndarray] | None = None,
    halo: np.ndarray | None = None,
    halo_levels: Sequence[bool] | None = None,
    global_counts: Mapping[str, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    exchange: object | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    present: Sequence[np.ndarray] | None = None,
    stencil: Stencil | None = None,
) -> EvaluationBatch:
    """Cover the points of ``groups`` (name -> [n_g, dim] own points) for every level.

    ``held[l]``: global subdomain ids this process evaluates on level l (default all);
    ``present[l]``: [n_subdomains] bool, the subdomains a schedule evaluates (default all): the
    windows are normalised over them, and the others get no pairs;
    ``halo``: [n_halo, dim] extra points evaluated by the levels flagged in ``halo_levels``;
    ``data``: observed values per group (see :attr:`EvaluationBatch.data`);
    ``stencil``: the finite-difference stencil of the own points (in the groups' order) for the
    jets ``spec``: its points are evaluated value-only in their place.
    """
    names = list(groups)
    sizes = [len(groups[g]) for g in names]
    x_own = np.concatenate([np.asarray(groups[g], dtype=np.float64).reshape(-1, problem.dim) for g in names])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    group_rows = {g: slice(int(offsets[i]), int(offsets[i + 1])) for i, g in enumerate(names)}
    halo = np.zeros((0, problem.dim)) if halo is None else np.asarray(halo, dtype=np.float64)
    evaluated = x_own if stencil is None else stencil.points
    eval_spec = spec if stencil is None else stencil.value_spec
    x_eval = torch.from_numpy(np.concatenate([evaluated, halo]))
    n_own = evaluated.shape[0]
    halo_levels = halo_levels or [False] * decomposition.n_levels

    coverages = []
    for l, level in enumerate(decomposition.levels):
        points = x_eval if halo_levels[l] else x_eval[:n_own]
        cov = cover_level(
            level, points, window, eval_spec, None if held is None else held[l], where=f"decomposition.levels[{l}]",
            product_dtype=dtype, present=None if present is None else torch.from_numpy(np.asarray(present[l], dtype=bool)),
        )
        coverages.append(_reindex(cov, x_eval.shape[0]).to(dtype, device))

    x_t = torch.from_numpy(x_own)
    scale, shift = constraint_jets(problem, x_eval[:n_own], eval_spec)
    product = torch.stack([product_matrix(scale[:, :, k], eval_spec) for k in range(scale.shape[2])], dim=-1)
    return EvaluationBatch(
        x=x_t.to(device=device, dtype=dtype),
        groups=group_rows,
        levels=tuple(coverages),
        constraint_product=product.to(device=device, dtype=dtype),
        constraint_shift=shift.to(device=device, dtype=dtype),
        spec=spec,
        n_eval=x_eval.shape[0],
        global_counts=dict(global_counts) if global_counts is not None else dict(zip(names, sizes)),
        exchange=exchange,
        data={k: torch.as_tensor(np.asarray(v), dtype=dtype, device=device) for k, v in (data or {}).items()},
        stencil=None if stencil is None else stencil.to(dtype, device),
    )


def _reindex(cov: LevelCoverage, n_eval: int) -> LevelCoverage:
    """Point padding slots at the dummy row ``n_eval`` of the full (own + halo) array."""
    if cov.n_points == n_eval:
        return cov
    index = torch.where(cov.point_index == cov.n_points, n_eval, cov.point_index)
    return LevelCoverage(
        subdomain_ids=cov.subdomain_ids,
        rows=cov.rows,
        point_index=index,
        x_norm=cov.x_norm,
        inv_half_width=cov.inv_half_width,
        window_product=cov.window_product,
        n_points=n_eval,
        n_pairs=cov.n_pairs,
    )


def select_rows(cov: LevelCoverage, keep: Tensor) -> LevelCoverage:
    """The coverage of the rows ``keep`` ([S] bool) of ``cov``: the same points, fewer subdomains
    (a schedule's active or fixed ones). Rows keep their parameter-stack positions."""
    rows = cov.rows if cov.rows is not None else torch.arange(cov.subdomain_ids.numel(), device=cov.point_index.device)
    index = cov.point_index[keep]
    return LevelCoverage(
        subdomain_ids=cov.subdomain_ids[keep.to(cov.subdomain_ids.device)],
        rows=rows[keep],
        point_index=index,
        x_norm=cov.x_norm[keep],
        inv_half_width=cov.inv_half_width[keep],
        window_product=cov.window_product[keep],
        n_points=cov.n_points,
        n_pairs=int((index != cov.n_points).sum()),
    )
