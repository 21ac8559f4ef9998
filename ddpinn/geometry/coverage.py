"""Which subdomains cover which points, and their normalised windows there.

Defines :class:`LevelCoverage`, the per-level evaluation layout the model consumes, and
:func:`cover_level` that builds it from a :class:`~ddpinn.geometry.decomposition.Level`, a point
set and the subset of the level's subdomains this process holds. Built once per point sampling
(never in the training step), in float64, then cast to the run's dtype and device.

Layout: rows of ``P`` point slots stacked on a leading axis. A held subdomain's points (those in
its support) fill one row, or several consecutive rows when it has many more points than others
(a subdomain in the interior covers several times the points of one cut by the domain's edge);
padding slots point at a dummy row ``n_points`` and carry a zero window, so they contribute
nothing. ``P`` is chosen to keep padding low without making rows too short to batch well.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
from torch import Tensor

from ddpinn.geometry.decomposition import Level
from ddpinn.geometry.windows import Window
from ddpinn.jets import JetSpec

__all__ = ["LevelCoverage", "cover_level", "CoverageError", "level_pairs", "product_matrix", "row_length"]


class CoverageError(ValueError):
    """A point that no subdomain of a level covers (outside the domain, or in a gap)."""


@dataclass(frozen=True, eq=False)
class LevelCoverage:
    """Evaluation layout of one level on one point set, for the subdomains a process holds.

    Attributes
    ----------
    subdomain_ids: [S] global id of the subdomain each row evaluates (sorted; a subdomain spans
        several rows when its points were split, and held subdomains without points have none).
    rows: [S] the position of each row's subdomain in the sorted held list (the row of the model's
        parameter stack to use), or None when that is simply ``arange(S)`` (one row per held
        subdomain: the model then uses its parameter stack as it is, without gathering).
    point_index: [S, P] index of each slot's point in the point set; padding slots hold ``n_points``.
    x_norm: [S, dim, P] normalised inputs ``(x - centre) / (width/2)``; zero on padding.
    inv_half_width: [S, dim] ``2 / width``, the chain-rule factor of the normalisation.
    window_product: [S, J, J, P] the product rule with the partition-of-unity window
        ``ŵ_j = w_j / Σ_k w_k`` (sum over *all* subdomains of the level, held or not) as a linear
        map on network jets: ``(ŵ·N)[:, a] = Σ_g window_product[:, a, g] · N[:, g]``; zero on
        padding. ``window_product[:, :, 0]`` holds the window's own jets.
    n_points: rows of the point set this layout indexes.
    n_pairs: number of real (point, held subdomain) pairs.
    """

    subdomain_ids: Tensor
    rows: Tensor | None
    point_index: Tensor
    x_norm: Tensor
    inv_half_width: Tensor
    window_product: Tensor
    n_points: int
    n_pairs: int

    @property
    def window(self) -> Tensor:
        """[S, J, P] jets of the normalised window."""
        return self.window_product[:, :, 0]

    @property
    def slots(self) -> int:
        return self.point_index.shape[1]

    def to(self, dtype: torch.dtype, device: torch.device | str) -> LevelCoverage:
        return LevelCoverage(
            subdomain_ids=self.subdomain_ids.to(device),
            rows=None if self.rows is None else self.rows.to(device),
            point_index=self.point_index.to(device),
            x_norm=self.x_norm.to(device=device, dtype=dtype),
            inv_half_width=self.inv_half_width.to(device=device, dtype=dtype),
            window_product=self.window_product.to(device=device, dtype=dtype),
            n_points=self.n_points,
            n_pairs=self.n_pairs,
        )


def _axis_pairs(x: Tensor, lo: np.ndarray, hi: np.ndarray) -> tuple[Tensor, Tensor]:
    """(point, interval) pairs with lo < x < hi along one axis, sorted by point then interval."""
    lo_t = torch.as_tensor(lo, dtype=x.dtype)
    hi_t = torch.as_tensor(hi, dtype=x.dtype)
    if torch.all(lo_t[1:] >= lo_t[:-1]) and torch.all(hi_t[1:] >= hi_t[:-1]):
        # Sorted interval ends: the covering intervals of x are a contiguous index range.
        first = torch.searchsorted(hi_t, x, right=True)  # first i with hi_i > x
        stop = torch.searchsorted(lo_t, x, right=False)  # first i with lo_i >= x
        counts = (stop - first).clamp_min(0)
        points = torch.repeat_interleave(torch.arange(x.numel()), counts)
        offsets = torch.arange(points.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return points, first[points] + offsets
    inside = (x[:, None] > lo_t[None, :]) & (x[:, None] < hi_t[None, :])
    points, intervals = torch.nonzero(inside, as_tuple=True)
    return points, intervals


def level_pairs(level: Level, x: Tensor) -> tuple[Tensor, Tensor]:
    """All (point, subdomain id) pairs of a level: two [n_pairs] int64 tensors, sorted by point.

    ``x``: [n_points, dim], float64, CPU. A pair means the point lies strictly inside the
    subdomain's box (where its window is non-zero); along an axis with a single subdomain every
    point is inside (the window is 1 along it, as for the reference FBPINN's one-subdomain level).
    """
    n = x.shape[0]
    points = torch.arange(n)
    ids = torch.zeros(n, dtype=torch.int64)
    for a in range(level.dim):
        if level.shape[a] == 1:
            continue  # every point pairs with the axis's only interval (index 0)
        lo, hi = level.axis_bounds(a)
        ax_points, ax_index = _axis_pairs(x[:, a].contiguous(), lo, hi)
        counts = torch.bincount(ax_points, minlength=n)
        start = torch.cumsum(counts, 0) - counts
        # Cartesian product per point: every pair so far times every covering interval on axis a.
        reps = counts[points]
        take = torch.repeat_interleave(torch.arange(points.numel()), reps)
        within = torch.arange(take.numel()) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
        points = points[take]
        ids = ids[take] * level.shape[a] + ax_index[start[points] + within]
    return points, ids


def cover_level(
    level: Level,
    x: Tensor,
    window: Window,
    spec: JetSpec,
    held: Tensor | None = None,
    where: str = "level",
    slots: int | None = None,
    product_dtype: torch.dtype = torch.float64,
    present: Tensor | None = None,
) -> LevelCoverage:
    """Build the :class:`LevelCoverage` of ``level`` on points ``x`` for the ``held`` subdomains.

    ``x``: [n_points, dim] (any float dtype; computed in float64 on CPU). ``held``: global ids
    (default: all). ``slots``: the row length P (default: :func:`row_length` of the subdomains'
    point counts); a subdomain with more points spans several rows. ``product_dtype``: the
    dtype the window product is stored in (the run's: each entry is one coefficient times a
    float64 window jet, so storing it in float32 rounds once, as a later cast would). Raises
    :class:`CoverageError` if a point is covered by no subdomain. ``present``: [n_subdomains]
    bool, the subdomains a schedule evaluates (default all): only they make up the partition of
    unity, and a point none of them covers gets no pair (no error).
    """
    x = x.detach().to(device="cpu", dtype=torch.float64)
    n = x.shape[0]
    points, ids = level_pairs(level, x)
    if present is not None:
        # Windows are normalised over the evaluated subdomains (the FBPINN schedulers' semantics):
        # an active subdomain next to switched-off ones carries the whole weight there.
        keep = torch.as_tensor(present, dtype=torch.bool)[ids]
        points, ids = points[keep], ids[keep]
    n_cover = torch.bincount(points, minlength=n)
    if present is None and n and int(n_cover.min()) == 0:
        bad = int(torch.nonzero(n_cover == 0)[0])
        raise CoverageError(
            f"{where}: point {x[bad].tolist()} lies in no subdomain; points must be inside the domain "
            f"and the subdomains must overlap"
        )

    centres = torch.as_tensor(level.subdomain_centres(ids.numpy()))
    half = torch.as_tensor(level.subdomain_widths(ids.numpy())) / 2
    t = (x[points] - centres) / half  # [n_pairs, dim]
    w = _window_jets(window, t, half, spec, [n == 1 for n in level.shape])  # [n_pairs, J]

    # Partition of unity: divide by the sum over every subdomain covering the point.
    total = torch.zeros(n, len(spec), dtype=torch.float64).index_add_(0, points, w)
    inv_total_derivs = [
        (-1.0) ** k * float(math.factorial(k)) * total[:, 0] ** (-(k + 1)) for k in range(spec.max_order + 1)
    ]
    inv_total = spec.compose(inv_total_derivs, total, axis=1)  # [n, J]
    w_hat = spec.mul(w, inv_total[points], axis=1)

    if held is None:
        held = torch.arange(level.n_subdomains)
    held = torch.as_tensor(held, dtype=torch.int64).sort().values
    local = torch.full((level.n_subdomains,), -1, dtype=torch.int64)
    local[held] = torch.arange(held.numel())
    keep = local[ids] >= 0
    points, ids, t, w_hat, sub = points[keep], ids[keep], t[keep], w_hat[keep], local[ids[keep]]

    # Rows: each subdomain's points in order, cut into chunks of P slots. Held subdomains that
    # cover none of these points (a replicated level's far-away ones, say) get no row at all.
    order = torch.argsort(sub * (n + 1) + points)
    points, t, w_hat, sub = points[order], t[order], w_hat[order], sub[order]
    counts = torch.bincount(sub, minlength=held.numel())
    fullest = int(counts.max()) if counts.numel() else 0
    slots = row_length(counts) if slots is None else max(1, min(int(slots), fullest))  # longer rows only pad
    rank_in_sub = torch.arange(points.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rows_per_sub = (counts + slots - 1) // slots
    first_row = torch.cumsum(rows_per_sub, 0) - rows_per_sub
    row = first_row[sub] + rank_in_sub // slots
    slot = rank_in_sub % slots
    param_rows = torch.repeat_interleave(torch.arange(held.numel()), rows_per_sub)  # [S]
    n_rows = param_rows.numel()
    layout_rows = None if n_rows == held.numel() and bool((rows_per_sub == 1).all()) else param_rows
    layout_ids = held[param_rows]

    point_index = torch.full((n_rows, slots), n, dtype=torch.int64)
    point_index[row, slot] = points
    x_norm = torch.zeros(n_rows, level.dim, slots, dtype=torch.float64)
    x_norm[row, :, slot] = t
    # Built in its final [row, J, J, slot] layout: a permuted copy of this, the largest array of
    # a batch (J² values per pair), cost a third of building the batch.
    product = torch.zeros(n_rows, len(spec), len(spec), slots, dtype=product_dtype)
    product[row, :, :, slot] = product_matrix(w_hat, spec).to(product_dtype)
    inv_half_width = 2 / torch.as_tensor(level.subdomain_widths(layout_ids.numpy()))
    return LevelCoverage(
        subdomain_ids=layout_ids,
        rows=layout_rows,
        point_index=point_index,
        x_norm=x_norm,
        inv_half_width=inv_half_width,
        window_product=product,
        n_points=n,
        n_pairs=int(points.numel()),
    )


_ROW_OVERHEAD_SLOTS = 128
"""The fixed cost of a row in the batched MLP, in slots: it keeps rows from getting short.
Measured on P4 L=5 (compiled, one CPU thread): 16 cut a 2-rank block's level 5 into 368 rows of
70 slots and ran at 13.4 ms/step; 128 gives 144 rows of 210 and 11.9 ms (64 to 512: within noise)."""


def row_length(counts: Tensor) -> int:
    """Slots per row P for subdomains with ``counts`` points ([S] int): the P minimising
    Σ_s ceil(c_s / P) · (P + overhead) among max(c)/k, k = 1…16 (one row for the fullest
    subdomain down to sixteen) and the counts themselves (so that those need no padding)."""
    counts = counts[counts > 0]
    if counts.numel() == 0:
        return 1
    c_max = int(counts.max())
    candidates = {-(-c_max // k) for k in range(1, 17)} | set(counts.unique().tolist())
    candidates = torch.tensor(sorted(candidates))
    rows = (counts[None, :] + candidates[:, None] - 1) // candidates[:, None]  # [n_candidates, S]
    cost = (rows * (candidates[:, None] + _ROW_OVERHEAD_SLOTS)).sum(1)
    return int(candidates[int(torch.argmin(cost))])


def _window_jets(window: Window, t: Tensor, half: Tensor, spec: JetSpec, single: list[bool]) -> Tensor:
    """Jets of the product window at each pair: [n_pairs, J] from t, half: [n_pairs, dim].

    Along axes with a single subdomain (``single[a]``) the profile is 1: a level-wide factor
    that the partition of unity divides out anyway, and 0/0 at the box edge if kept."""
    ones = [torch.ones_like(t[:, 0])] + [torch.zeros_like(t[:, 0])] * spec.max_order
    profiles = [ones if single[a] else window.profile(t[:, a], spec.max_order) for a in range(t.shape[1])]
    rows = []
    for index in spec.indices:
        value = torch.ones(t.shape[0], dtype=t.dtype)
        for a in range(t.shape[1]):
            k = index.count(a)
            value = value * profiles[a][k] / half[:, a] ** k
        rows.append(value)
    return torch.stack(rows, dim=1)


def product_matrix(w: Tensor, spec: JetSpec) -> Tensor:
    """[n, J, J]: M[:, a, g] = Σ coef · w[:, b] over the Leibniz terms (a; b, g) of ``spec``."""
    m = torch.zeros(w.shape[0], len(spec), len(spec), dtype=w.dtype)
    for terms in spec.leibniz:
        for t in terms:
            m[:, t.row, t.b_row] += t.coef * w[:, t.a_row]
    return m
