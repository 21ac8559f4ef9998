"""Named derivative requests and truncated-Taylor ("jet") algebra.

Defines :class:`D` (what a problem asks for, by name) and :class:`JetSpec` (the closed, ordered
set of derivative multi-indices that a run propagates), plus the two rules every jet
computation in ddpinn is built from: the Leibniz product rule and the Faà di Bruno chain rule.
Used by the geometry (window jets), the model (network jets) and the problems (residuals).

Conventions used across ddpinn:

* an **axis** is an input coordinate, numbered 0..dim-1 and named by the problem (``"x"``);
* a **multi-index** is a sorted tuple of axes: ``()`` is the value, ``(0,)`` is d/dx0,
  ``(0, 1)`` is d²/dx0 dx1, ``(1, 1)`` is d²/dx1²;
* a **jet tensor** has one row per multi-index of a :class:`JetSpec` along a "jet axis";
  row 0 is always the value.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["D", "JetSpec", "MultiIndex", "pointwise_jets"]

MultiIndex = tuple[int, ...]


@dataclass(frozen=True, init=False)
class D:
    """A named derivative of an output field: ``D("u", "x", "x")`` is d²u/dx².

    ``D("u")`` is the field itself. Its :attr:`name` (``"u_xx"``) is the key residuals use.
    """

    field: str
    axes: tuple[str, ...]

    def __init__(self, field: str, *axes: str) -> None:
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "axes", tuple(axes))

    @property
    def name(self) -> str:
        return self.field if not self.axes else f"{self.field}_{''.join(self.axes)}"

    def multi_index(self, input_names: Sequence[str]) -> MultiIndex:
        """The sorted axis numbers of this derivative; raises ``KeyError`` for an unknown axis."""
        unknown = [a for a in self.axes if a not in input_names]
        if unknown:
            raise KeyError(
                f"derivative {self.name!r} uses input {unknown[0]!r}, but the problem's inputs are "
                f"{list(input_names)}"
            )
        return tuple(sorted(input_names.index(a) for a in self.axes))


def _sub_multisets(index: MultiIndex) -> list[MultiIndex]:
    """All distinct sub-multisets of ``index`` (including () and ``index`` itself), sorted."""
    counts = Counter(index)
    axes = sorted(counts)
    subs = []
    for picks in itertools.product(*(range(counts[a] + 1) for a in axes)):
        subs.append(tuple(a for a, k in zip(axes, picks) for _ in range(k)))
    return subs


def _set_partitions(items: list[int]) -> Iterable[list[list[int]]]:
    """Every partition of the list ``items`` into non-empty blocks (Bell-number many)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        for i in range(len(partition)):
            yield partition[:i] + [[first] + partition[i]] + partition[i + 1 :]
        yield [[first]] + partition


def _order_key(index: MultiIndex) -> tuple[int, MultiIndex]:
    return (len(index), index)


@dataclass(frozen=True)
class LeibnizTerm:
    """``out[row] += coef * a[a_row] * b[b_row]``: one term of a jet product."""

    row: int
    a_row: int
    b_row: int
    coef: float


@dataclass(frozen=True)
class ChainTerm:
    """``h[row] += coef * f^(order)(z0) * prod(z[r] for r in block_rows)``: one Faà di Bruno term."""

    row: int
    order: int
    coef: float
    block_rows: tuple[int, ...]


@dataclass(frozen=True)
class JetSpec:
    """An ordered set of multi-indices closed under taking sub-multisets.

    ``indices[0] == ()`` (the value); rows are sorted by derivative order, so the rows of one
    order are contiguous. Build one with :meth:`closure`.
    """

    dim: int
    indices: tuple[MultiIndex, ...]
    _rows: dict[MultiIndex, int] = field(init=False, repr=False, compare=False)
    leibniz: tuple[tuple[LeibnizTerm, ...], ...] = field(init=False, repr=False, compare=False)
    """Per row, the product-rule terms of that row."""
    chain: tuple[tuple[ChainTerm, ...], ...] = field(init=False, repr=False, compare=False)
    """Per row, the chain-rule terms of that row (empty for the value row)."""

    def __post_init__(self) -> None:
        if not self.indices or self.indices[0] != ():
            raise ValueError("a JetSpec's first multi-index must be () (the value)")
        rows = {idx: r for r, idx in enumerate(self.indices)}
        for idx in self.indices:
            if any(a < 0 or a >= self.dim for a in idx) or tuple(sorted(idx)) != idx:
                raise ValueError(f"bad multi-index {idx} for dim {self.dim}")
            missing = [s for s in _sub_multisets(idx) if s not in rows]
            if missing:
                raise ValueError(f"JetSpec is not closed: {idx} needs {missing[0]}")
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "leibniz", self._leibniz_terms())
        object.__setattr__(self, "chain", self._chain_terms())

    @classmethod
    def closure(cls, dim: int, requested: Iterable[MultiIndex]) -> JetSpec:
        """The smallest closed spec holding the value and every ``requested`` multi-index."""
        wanted = {()}
        for idx in requested:
            wanted.update(_sub_multisets(tuple(sorted(idx))))
        return cls(dim, tuple(sorted(wanted, key=_order_key)))

    def __len__(self) -> int:
        return len(self.indices)

    def row(self, index: MultiIndex) -> int:
        """Row of a multi-index (any axis order)."""
        return self._rows[tuple(sorted(index))]

    def __contains__(self, index: MultiIndex) -> bool:
        return tuple(sorted(index)) in self._rows

    @property
    def max_order(self) -> int:
        return len(self.indices[-1])

    def order_slice(self, order: int) -> slice:
        """The contiguous rows holding derivatives of exactly this order."""
        rows = [r for r, idx in enumerate(self.indices) if len(idx) == order]
        return slice(rows[0], rows[-1] + 1) if rows else slice(0, 0)

    def _leibniz_terms(self) -> tuple[tuple[LeibnizTerm, ...], ...]:
        by_row = []
        for row, idx in enumerate(self.indices):
            terms = []
            counts = Counter(idx)
            for sub in _sub_multisets(idx):
                sub_counts = Counter(sub)
                rest = list((counts - sub_counts).elements())
                coef = math.prod(math.comb(counts[a], sub_counts[a]) for a in counts)
                terms.append(LeibnizTerm(row, self.row(sub), self.row(tuple(rest)), float(coef)))
            by_row.append(tuple(terms))
        return tuple(by_row)

    def _chain_terms(self) -> tuple[tuple[ChainTerm, ...], ...]:
        by_row: list[tuple[ChainTerm, ...]] = [()]
        for row, idx in enumerate(self.indices[1:], start=1):
            grouped: Counter[tuple[int, tuple[int, ...]]] = Counter()
            for partition in _set_partitions(list(range(len(idx)))):
                blocks = sorted(self.row(tuple(sorted(idx[p] for p in block))) for block in partition)
                grouped[(len(partition), tuple(blocks))] += 1
            by_row.append(
                tuple(ChainTerm(row, k, float(n), blocks) for (k, blocks), n in sorted(grouped.items()))
            )
        return tuple(by_row)

    # ------------------------------------------------------------------ jet arithmetic
    def mul(self, a: Tensor, b: Tensor, axis: int) -> Tensor:
        """Jet of the product a·b.

        ``a`` and ``b`` broadcast against each other and carry ``len(self)`` rows on ``axis``;
        use a negative ``axis`` when their leading axes differ.
        """
        # unbind, not select: one backward stack per operand instead of a zero-filled tensor per row.
        a_rows, b_rows = a.unbind(axis), b.unbind(axis)
        rows = [_sum_terms((a_rows[t.a_row] * b_rows[t.b_row], t.coef) for t in terms) for terms in self.leibniz]
        return torch.stack(rows, dim=axis)

    def compose(self, derivs: Sequence[Tensor], z: Tensor, axis: int) -> Tensor:
        """Jet of f(z), given ``derivs[k] = f^(k)(z0)`` for k = 0..max_order, each shaped like a row of z."""
        z_rows = z.unbind(axis)
        rows = [derivs[0]]
        for terms in self.chain[1:]:
            rows.append(_sum_terms((_product(derivs[t.order], z_rows, t.block_rows), t.coef) for t in terms))
        return torch.stack(rows, dim=axis)

    def describe(self, input_names: Sequence[str], field: str = "u") -> list[str]:
        """Human-readable row names, e.g. ``['u', 'u_x', 'u_xx']``."""
        return [D(field, *(input_names[a] for a in idx)).name for idx in self.indices]


def _product(first: Tensor, z_rows: Sequence[Tensor], rows: tuple[int, ...]) -> Tensor:
    for r in rows:
        first = first * z_rows[r]
    return first


def _sum_terms(terms: Iterable[tuple[Tensor, float]]) -> Tensor:
    total = None
    for value, coef in terms:
        if coef != 1.0:
            value = value * coef
        total = value if total is None else total + value
    assert total is not None, "every jet row has at least one term"
    return total


def pointwise_jets(fn, x: Tensor, spec: JetSpec) -> Tensor:
    """Jets of a point-wise function by nested autograd: [n, J, n_out] from ``fn(x)``: [n, n_out].

    ``fn`` must treat each row of ``x`` ([n, dim]) independently. For geometry-only quantities
    (hard-constraint factors, exact solutions in tests), never for the training step.
    """
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    if value.dim() == 1:
        value = value[:, None]
    if len(spec) > 1 and not value.requires_grad:
        raise ValueError(
            "pointwise_jets: the function's output does not depend on x through torch operations "
            "(NumPy inside?), so autograd cannot differentiate it"
        )
    rows: dict[MultiIndex, Tensor] = {(): value}
    for index in spec.indices[1:]:
        parent = rows[index[:-1]]
        cols = []
        for k in range(parent.shape[1]):
            if not parent.requires_grad:
                cols.append(torch.zeros_like(parent[:, k]))
                continue
            (grad,) = torch.autograd.grad(parent[:, k].sum(), x, create_graph=True, allow_unused=True)
            cols.append(torch.zeros_like(parent[:, k]) if grad is None else grad[:, index[-1]])
        rows[index] = torch.stack(cols, dim=1)
    return torch.stack([rows[i] for i in spec.indices], dim=1).detach()
