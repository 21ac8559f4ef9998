"""Rectangular multilevel domain decompositions (pure geometry, no torch.distributed).

Defines :class:`Box` (the problem domain), :class:`Level` (a tensor-product grid of overlapping
rectangular subdomains) and :class:`Decomposition` (the levels of an FBPINN), with the builders
:func:`multilevel` (the layout of Dolean et al. 2024) and :func:`uniform_level`. Used by the
coverage/window code, the partition and the model.

A level's subdomains are the tensor product of per-axis intervals ``[centre - width/2,
centre + width/2]``; the global subdomain id is the C-order ravel of the per-axis indices, so
ids are stable whatever process holds a subdomain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Block", "Box", "Level", "Decomposition", "multilevel", "uniform_level", "with_parameter_axes", "GeometryError",
]


class GeometryError(ValueError):
    """A decomposition that cannot work (a gap, a negative width...); the message names the fix."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``lo[a] <= x[a] <= hi[a]``; ``lo``, ``hi``: [dim] (problem units)."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", tuple(float(v) for v in self.lo))
        object.__setattr__(self, "hi", tuple(float(v) for v in self.hi))
        if len(self.lo) != len(self.hi) or not self.lo:
            raise GeometryError(f"Box lo {self.lo} and hi {self.hi} must have the same non-zero length")
        bad = [a for a, (l, h) in enumerate(zip(self.lo, self.hi)) if not h > l]
        if bad:
            raise GeometryError(f"Box axis {bad[0]}: hi ({self.hi[bad[0]]}) must exceed lo ({self.lo[bad[0]]})")

    @property
    def dim(self) -> int:
        return len(self.lo)

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.hi) - np.asarray(self.lo)

    @property
    def centre(self) -> np.ndarray:
        return (np.asarray(self.hi) + np.asarray(self.lo)) / 2


@dataclass(frozen=True)
class Block:
    """A half-open box ``lo <= x < hi`` that owns points; closed (``<= hi``) on the axes where
    ``closed_hi`` is set, i.e. where it touches the domain's upper face. Blocks that tile a domain
    therefore own every point of it exactly once."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    closed_hi: tuple[bool, ...]

    @classmethod
    def whole(cls, domain: Box) -> Block:
        return cls(domain.lo, domain.hi, (True,) * domain.dim)

    def contains(self, x: np.ndarray, axis: int | None = None) -> np.ndarray:
        """Mask of the points of ``x`` ([n, dim], or [n] along ``axis``) that this block owns."""
        axes = range(len(self.lo)) if axis is None else [axis]
        x = np.asarray(x)
        mask = np.ones(x.shape[0], dtype=bool)
        for a in axes:
            xa = x if axis is not None else x[:, a]
            upper = xa <= self.hi[a] if self.closed_hi[a] else xa < self.hi[a]
            mask &= (xa >= self.lo[a]) & upper
        return mask


@dataclass(frozen=True, eq=False)
class Level:
    """One level: per axis ``a``, subdomain centres ``centres[a]`` and widths ``widths[a]``.

    ``centres[a]``, ``widths[a]``: float64 arrays of length ``shape[a]``. Subdomain ``(i_0, ..., i_{d-1})``
    is the box with those per-axis intervals; its global id is ``np.ravel_multi_index(i, shape)``.
    """

    centres: tuple[np.ndarray, ...]
    widths: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        centres = tuple(np.asarray(c, dtype=np.float64).reshape(-1) for c in self.centres)
        widths = tuple(
            np.broadcast_to(np.asarray(w, dtype=np.float64), c.shape).copy()
            for w, c in zip(self.widths, centres)
        )
        if len(centres) != len(widths):
            raise GeometryError("a level needs one centre array and one width array per axis")
        for a, (c, w) in enumerate(zip(centres, widths)):
            if c.size == 0:
                raise GeometryError(f"axis {a} has no subdomains")
            if not np.all(np.isfinite(c)) or not np.all(np.isfinite(w)):
                raise GeometryError(f"axis {a}: centres and widths must be finite")
            if np.any(w <= 0):
                raise GeometryError(f"axis {a}: widths must be positive, got min {w.min():g}")
            for arr in (c, w):
                arr.setflags(write=False)
        object.__setattr__(self, "centres", centres)
        object.__setattr__(self, "widths", widths)

    @property
    def dim(self) -> int:
        return len(self.centres)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.size for c in self.centres)

    @property
    def n_subdomains(self) -> int:
        return int(np.prod(self.shape))

    def axis_bounds(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the subdomain intervals along one axis, each [shape[axis]]."""
        half = self.widths[axis] / 2
        return self.centres[axis] - half, self.centres[axis] + half

    def subdomain_boxes(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners of subdomains ``ids`` (all by default): two [n, dim] arrays."""
        ids = np.arange(self.n_subdomains) if ids is None else np.asarray(ids)
        multi = np.unravel_index(ids, self.shape)
        lo = np.stack([self.axis_bounds(a)[0][multi[a]] for a in range(self.dim)], axis=-1)
        hi = np.stack([self.axis_bounds(a)[1][multi[a]] for a in range(self.dim)], axis=-1)
        return lo, hi

    def subdomain_centres(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Centres of subdomains ``ids``: [n, dim]."""
        ids = np.arange(self.n_subdomains) if ids is None else np.asarray(ids)
        multi = np.unravel_index(ids, self.shape)
        return np.stack([self.centres[a][multi[a]] for a in range(self.dim)], axis=-1)

    def subdomain_widths(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Widths of subdomains ``ids``: [n, dim]."""
        ids = np.arange(self.n_subdomains) if ids is None else np.asarray(ids)
        multi = np.unravel_index(ids, self.shape)
        return np.stack([self.widths[a][multi[a]] for a in range(self.dim)], axis=-1)

    def check_covers(self, domain: Box, where: str, axis_names: Sequence[str], hint: str | None = None) -> None:
        """Raise :class:`GeometryError` unless the open subdomain boxes cover the closed ``domain``.

        A window vanishes on its box's edge, so boxes that merely touch leave a point where the
        windows sum to zero; the overlap must be strict. An axis with a single subdomain is covered
        whatever its width. ``hint`` replaces the default advice.
        """
        for a in range(self.dim):
            if self.shape[a] == 1:
                continue  # a single subdomain along an axis covers all of it (window 1 there)
            lo, hi = self.axis_bounds(a)
            name = axis_names[a]
            # Sweep from the domain's lower end: `at` is the first point not yet known to be covered.
            at, end = domain.lo[a], domain.hi[a]
            while True:
                reach = hi[lo < at].max(initial=-np.inf)
                if not reach > at:
                    above = lo[lo >= at]
                    if at == domain.lo[a]:
                        problem = f"no subdomain covers {name} = {at:g}"
                        if lo.size and lo.min() >= at:
                            problem += f" (the lowest subdomain starts at {lo.min():g})"
                        advice = "widen the subdomains or move a centre onto the boundary"
                    elif above.size and above.min() <= end:
                        problem = f"subdomains leave a gap in {name} between {at:g} and {above.min():g}"
                        advice = "increase the overlap (width/spacing must be > 1) or the widths"
                    else:
                        problem = f"no subdomain covers {name} = {end:g} (coverage ends at {at:g})"
                        advice = "widen the subdomains or move a centre onto the boundary"
                    raise GeometryError(f"{where}: {problem}; {hint or advice}")
                if reach > end:
                    break
                at = reach


@dataclass(frozen=True, eq=False)
class Decomposition:
    """The levels of a (multilevel) FBPINN over ``domain``; levels are numbered 1..L in messages."""

    domain: Box
    levels: tuple[Level, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        if not self.levels:
            raise GeometryError("decomposition.levels: need at least one level")
        for i, level in enumerate(self.levels):
            if level.dim != self.domain.dim:
                raise GeometryError(
                    f"decomposition.levels[{i}]: has {level.dim} axes but the domain has {self.domain.dim}"
                )

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def n_subdomains(self) -> int:
        return sum(level.n_subdomains for level in self.levels)

    def validate(self, axis_names: Sequence[str]) -> None:
        """Check that every level covers the whole domain (see :meth:`Level.check_covers`)."""
        for i, level in enumerate(self.levels):
            level.check_covers(self.domain, f"decomposition.levels[{i}]", axis_names)

    def describe(self) -> str:
        parts = [f"{'x'.join(map(str, lv.shape))}" for lv in self.levels]
        return f"{self.n_levels} level(s) [{', '.join(parts)}], {self.n_subdomains} subdomains"


def uniform_level(domain: Box, shape: Sequence[int], overlap: float, widths: Sequence[float] | None = None) -> Level:
    """A level of ``shape[a]`` subdomains per axis with centres ``linspace(lo, hi, n)``.

    Widths are ``overlap × centre spacing`` unless given per axis; a single subdomain along an
    axis is centred with width ``overlap × domain length`` (the multilevel paper's coarse level).
    """
    centres, out_widths = [], []
    for a, n in enumerate(shape):
        lo, hi = domain.lo[a], domain.hi[a]
        if n == 1:
            c = np.array([(lo + hi) / 2])
            w = overlap * (hi - lo)
        else:
            c = np.linspace(lo, hi, n)
            w = overlap * (hi - lo) / (n - 1)
        if widths is not None:
            w = widths[a]
        centres.append(c)
        out_widths.append(np.full(n, float(w)))
    return Level(tuple(centres), tuple(out_widths))


def multilevel(domain: Box, n_levels: int, overlap: float = 1.9) -> Decomposition:
    """Level l = 1..n_levels has 2^(l-1) subdomains per axis (Dolean, Heinlein, Mishra, Moseley 2024)."""
    levels = [uniform_level(domain, [2 ** (l - 1)] * domain.dim, overlap) for l in range(1, n_levels + 1)]
    return Decomposition(domain, tuple(levels))


def with_parameter_axes(decomposition: Decomposition, domain: Box, axes: Sequence[int]) -> Decomposition:
    """``decomposition`` (over the decomposed axes of ``domain``) with the parameter axes ``axes``
    of ``domain`` inserted at those positions: on every level one subdomain spanning the whole
    range, of width the range's length, so the window factor along it is 1 and the networks see
    the parameter normalised to [-1, 1] (conditioned inputs, :mod:`ddpinn.problems.conditioned`)."""
    axes = sorted(axes)
    decomposed = [a for a in range(domain.dim) if a not in axes]
    if len(decomposed) != decomposition.domain.dim:
        raise GeometryError(
            f"with_parameter_axes: the decomposition has {decomposition.domain.dim} axes, but {domain.dim} axes "
            f"less the parameter axes {axes} leave {len(decomposed)}"
        )
    levels = []
    for level in decomposition.levels:
        centres, widths = [None] * domain.dim, [None] * domain.dim
        for k, a in enumerate(decomposed):
            centres[a], widths[a] = level.centres[k], level.widths[k]
        for a in axes:
            centres[a], widths[a] = np.array([domain.centre[a]]), np.array([domain.lengths[a]])
        levels.append(Level(tuple(centres), tuple(widths)))
    return Decomposition(domain, tuple(levels))
