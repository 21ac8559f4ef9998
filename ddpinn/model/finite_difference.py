"""Finite-difference derivatives: the jets of u from value-only evaluations at stencil points.

Defines :class:`FiniteDifference` (the step per axis and the domain, from ``model.derivatives:
fd``), which turns a point set into a :class:`Stencil`: the stencil points to evaluate and the
fixed linear map from u at those points to the ``[n, J, n_out]`` jets that exact forward-mode jets
would give. Used by :func:`ddpinn.model.batch.build_batch` (the batch evaluates the stencil
points value-only) and :meth:`ddpinn.model.fbpinn.FBPINN.forward` (which applies the map).

The differences are taken of the final u (after the level average and the hard-constraint ansatz),
so nothing downstream changes. Each derivative ∂^α is the tensor product over its axes of 1-D
O(h²) formulas with integer offsets (in steps h_a): central (``-m..m``, m = ⌈k/2⌉ for order k)
where that stays inside the domain, else one-sided (``0..k+1`` or ``-(k+1)..0``) towards the
interior, so every stencil point lies in the closed domain and the map is O(h²) everywhere.
A stencil depends on the point and the domain only, never on the process's block, so N processes
difference exactly what one process does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddpinn.jets import JetSpec

__all__ = ["FiniteDifference", "Stencil", "difference_weights"]

_CENTRAL, _FORWARD, _BACKWARD = 0, 1, 2


def difference_weights(offsets: Sequence[int], order: int) -> np.ndarray:
    """Weights w with Σ_j w_j f(x + s_j h) = h^order f^(order)(x) + O(h^(n - order)) for the n
    integer ``offsets`` s (the Taylor conditions Σ_j w_j s_j^p / p! = δ_{p,order}, p < n)."""
    s = np.asarray(offsets, dtype=np.float64)
    powers = np.arange(len(s))
    taylor = s[None, :] ** powers[:, None] / np.array([math.factorial(int(p)) for p in powers])[:, None]
    rhs = (powers == order).astype(np.float64)
    return np.linalg.solve(taylor, rhs)


def _axis_formulas(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of the central, forward and backward formulas of one order, padded
    with weight 0 to a common length: ([3, L] int64, [3, L] float64), rows in _CENTRAL.. order."""
    m = (order + 1) // 2
    sets = [list(range(-m, m + 1)), list(range(order + 2)), list(range(-(order + 1), 1))]
    length = max(len(s) for s in sets)
    offsets = np.zeros((3, length), dtype=np.int64)
    weights = np.zeros((3, length))
    for c, s in enumerate(sets):
        offsets[c, : len(s)] = s
        weights[c, : len(s)] = difference_weights(s, order)
    weights[np.abs(weights) < 1e-12] = 0.0  # the centre of a central odd-order formula: no point
    return offsets, weights


@dataclass(frozen=True, eq=False)
class Stencil:
    """The stencil of ``n`` points for the jets ``spec``.

    points: [n_points, dim] float64, the points to evaluate, grouped by the point they serve (in
    its order). index: [n, J, K] int64 rows of ``points``; weights: [n, J, K] (padding: weight 0),
    so that jet row r of point i is Σ_k weights[i, r, k] · u(points[index[i, r, k]]).
    """

    points: np.ndarray
    index: Tensor
    weights: Tensor
    value_spec: JetSpec
    """The value-only spec the stencil points are evaluated with."""

    @property
    def n_points(self) -> int:
        return self.points.shape[0]

    def to(self, dtype: torch.dtype, device: torch.device | str) -> Stencil:
        return Stencil(self.points, self.index.to(device), self.weights.to(device=device, dtype=dtype), self.value_spec)

    def apply(self, values: Tensor) -> Tensor:
        """Jets [n, J, n_out] from u at the stencil points, ``values``: [n_points, n_out]."""
        n, n_jets, width = self.index.shape
        gathered = values.index_select(0, self.index.reshape(-1)).view(n, n_jets, width, -1)
        return (gathered * self.weights.unsqueeze(3)).sum(2)


@dataclass(frozen=True)
class FiniteDifference:
    """Central (one-sided at the domain's faces) O(h²) differences with step ``step[a]`` along
    axis a (problem units), inside the box ``lo``..``hi``."""

    step: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def check(self, spec: JetSpec) -> str | None:
        """Why the steps cannot serve ``spec`` (a one-sided formula of the highest order along an
        axis longer than half the domain there, so a midpoint has no formula), or None."""
        for a in range(spec.dim):
            order = max((idx.count(a) for idx in spec.indices), default=0)
            reach = (order + 1) * self.step[a]
            if order and reach > (self.hi[a] - self.lo[a]) / 2:
                return (f"the one-sided order-{order} formula along axis {a} reaches {order + 1} steps of "
                        f"{self.step[a]:.3g} = {reach:.3g}, more than half the domain's length {self.hi[a] - self.lo[a]:.3g}")
        return None

    def stencil(self, x: np.ndarray, spec: JetSpec) -> Stencil:
        """The stencil of points ``x`` ([n, dim] float64) for the jets ``spec``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, spec.dim)
        n, dim = x.shape
        reach = max(spec.max_order + 1, 1)
        base = 2 * reach + 1  # integer offsets lie in [-reach, reach] per axis
        step = np.asarray(self.step, dtype=np.float64)
        point_ids, rows, codes, weights = [], [], [], []
        for r, idx in enumerate(spec.indices):
            offsets = np.zeros((n, 1, dim), dtype=np.int64)
            w = np.ones((n, 1))
            for a in sorted(set(idx)):
                k = idx.count(a)
                axis_offsets, axis_weights = _axis_formulas(k)
                choice = self._choose(x[:, a], a, axis_offsets)
                shift = np.zeros((n, 1, axis_offsets.shape[1], dim), dtype=np.int64)
                shift[..., a] = axis_offsets[choice][:, None, :]
                offsets = (offsets[:, :, None, :] + shift).reshape(n, -1, dim)
                w = (w[:, :, None] * axis_weights[choice][:, None, :] / step[a] ** k).reshape(n, -1)
            keep = w != 0
            point_ids.append(np.broadcast_to(np.arange(n)[:, None], w.shape)[keep])
            rows.append(np.full(int(keep.sum()), r))
            codes.append(((offsets + reach) * base ** np.arange(dim)).sum(2)[keep])
            weights.append(w[keep])
        point_ids, rows = np.concatenate(point_ids), np.concatenate(rows)
        codes, weights = np.concatenate(codes), np.concatenate(weights)

        # One stencil point per distinct (point, offset): u_x and u_xx share x ± h e_a.
        keys, stencil_rows = np.unique(point_ids * base**dim + codes, return_inverse=True)
        offsets = (keys % base**dim)[:, None] // base ** np.arange(dim) % base - reach
        points = x[keys // base**dim] + offsets * step
        points = np.clip(points, self.lo, self.hi)  # rounding only: the formulas stay inside

        # Entries grouped by (point, row), each group padded to the longest one.
        order = np.lexsort((rows, point_ids))
        group = point_ids[order] * len(spec) + rows[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        position = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
        width = int(position.max()) + 1 if len(group) else 1
        index = np.zeros((n, len(spec), width), dtype=np.int64)
        table = np.zeros((n, len(spec), width))
        index[point_ids[order], rows[order], position] = stencil_rows[order]
        table[point_ids[order], rows[order], position] = weights[order]
        return Stencil(points, torch.from_numpy(index), torch.from_numpy(table), JetSpec.closure(dim, []))

    def _choose(self, xa: np.ndarray, axis: int, offsets: np.ndarray) -> np.ndarray:
        """Per point, the formula along ``axis`` whose points stay in the domain: central where it
        fits, else forward, else backward ([n] int in _CENTRAL.. numbering)."""
        tol = 1e-9 * (self.hi[axis] - self.lo[axis])
        h = self.step[axis]

        def fits(c: int) -> np.ndarray:
            return (xa + offsets[c].min() * h >= self.lo[axis] - tol) & (xa + offsets[c].max() * h <= self.hi[axis] + tol)

        return np.where(fits(_CENTRAL), _CENTRAL, np.where(fits(_FORWARD), _FORWARD, _BACKWARD))
