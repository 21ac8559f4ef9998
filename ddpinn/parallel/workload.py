"""Per-rank work of a layout, counted per axis: never from the points or the pair list.

Defines :class:`PointCounter` (how many training points of a run lie in boxes, for every rank at
once), :class:`RankWorkload` and :class:`Workload`, built by :func:`workload`. A rank's own
points, its (point, subdomain) pairs per level and its halo points follow from per-axis counts:
a level's subdomains, a rank's block and the region its subdomains cover are products of per-axis
intervals, and a loss term's points are products of per-axis *atoms* (grid lines, a face's fixed
coordinate, sampling cells). A sum over a product set of subdomains of a product of per-axis
counts is the product of the per-axis sums, so the cost is about (subdomains per axis x atoms per
axis) per level plus the ranks, whatever points x subdomains is.

Exactness: grid sampling and given points (data sets) are counted exactly; ``uniform`` sampling's
own points are exact (the per-cell counts of :func:`~ddpinn.sampling.uniform_cell_counts`) and
its pairs and halo points are expectations (points uniform within a cell); Hammersley points
are counted exactly along the first axis (they are evenly spaced there:
:func:`~ddpinn.sampling.hammersley_axis_counts`) and by density along the others; for Sobol,
Halton and Latin hypercube points every count is an expectation (density x volume; a Latin
hypercube's marginals are within one point of it per block edge). :attr:`Workload.exact` says
which.

With finite-difference derivatives (``model.derivatives: fd``) the networks evaluate the stencil
points of the own points instead of the points themselves (:class:`EvaluatedRows`): pairs, halo
points and evaluated own rows are the point counts times the stencil points of a point inside the
domain. That is exact for points at least (order + 1) steps h from every face; nearer, the
one-sided formulas take more points (one more per axis with a second derivative, e.g. 6 instead
of 5 for a Laplacian on a face), so the counts are low by about the share of such points over
the stencil size (the face points of boundary terms are all such). Pairs and halo points are
then approximations whatever the sampling (a stencil point can also fall into a subdomain its
point is not in, or out of one it is in, which about evens out).

Used by ``ddpinn check``, the memory model, :mod:`ddpinn.parallel.analysis` and
``benchmarks/setup_scaling.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ddpinn import rng
from ddpinn.build import Experiment
from ddpinn.geometry import Box, Level
from ddpinn.jets import JetSpec
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.sampling import (
    PointGroup,
    SamplingMethod,
    grid_lines,
    grid_shape,
    hammersley_axis_counts,
    uniform_cell_counts,
)

__all__ = [
    "EvaluatedRows", "Intervals", "PointCounter", "RankWorkload", "Workload", "owned_regions", "union_counts", "workload",
]


@dataclass(frozen=True, eq=False)
class Intervals:
    """k intervals along one axis: ``lo``, ``hi`` [k] float64 (may be infinite), and whether each
    end is closed (``lo_closed``, ``hi_closed``: [k] bool). An interval with hi < lo is empty."""

    lo: np.ndarray
    hi: np.ndarray
    lo_closed: np.ndarray
    hi_closed: np.ndarray

    @classmethod
    def open(cls, lo: np.ndarray, hi: np.ndarray) -> Intervals:
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        return cls(lo, hi, np.zeros(lo.shape, bool), np.zeros(lo.shape, bool))

    @classmethod
    def blocks(cls, layout: ParallelLayout, axis: int) -> Intervals:
        """The ownership blocks along ``axis``: [grid[axis]] half-open intervals, the last closed."""
        cuts = layout.cut_coordinates(axis)
        closed = np.arange(layout.grid[axis]) == layout.grid[axis] - 1
        return cls(cuts[:-1], cuts[1:], np.ones(closed.shape, bool), closed)

    def __len__(self) -> int:
        return self.lo.size

    def take(self, index: np.ndarray) -> Intervals:
        return Intervals(self.lo[index], self.hi[index], self.lo_closed[index], self.hi_closed[index])


# ---------------------------------------------------------------------------------- atoms and densities
@dataclass(frozen=True, eq=False)
class _AxisAtoms:
    """A loss term's points along one axis: atoms ``[lo, hi]`` ([m] each) that are points where
    lo == hi (grid lines, a face's fixed coordinate, given coordinates) and cells with uniformly
    spread points otherwise."""

    lo: np.ndarray
    hi: np.ndarray

    def mass(self, iv: Intervals) -> np.ndarray:
        """[k, m]: the fraction of each atom's points inside each interval."""
        lo, hi, a_lo, a_hi = iv.lo[:, None], iv.hi[:, None], self.lo[None, :], self.hi[None, :]
        above = np.where(iv.lo_closed[:, None], a_lo >= lo, a_lo > lo)
        below = np.where(iv.hi_closed[:, None], a_lo <= hi, a_lo < hi)
        inside = (above & below).astype(np.float64)
        if np.all(self.lo == self.hi):
            return inside
        width = np.where(a_hi > a_lo, a_hi - a_lo, 1.0)
        overlap = np.clip(np.minimum(hi, a_hi) - np.maximum(lo, a_lo), 0.0, None) / width
        return np.where(a_hi > a_lo, overlap, inside)

    def owned(self, blocks: Intervals) -> np.ndarray:
        """[k, m]: 1 where block k owns the atom. A cell belongs to the block that holds its lower
        corner, as in sampling; blocks are aligned with the cells, so its points follow it."""
        lo = self.lo[None, :]
        above = lo >= blocks.lo[:, None]
        below = np.where(blocks.hi_closed[:, None], lo <= blocks.hi[:, None], lo < blocks.hi[:, None])
        return (above & below).astype(np.float64)


class _Density:
    """How many points of one loss term each combination of per-axis atoms holds."""

    def __init__(self, name: str, atoms: Sequence[_AxisAtoms], exact: bool) -> None:
        self.name, self.atoms, self.exact = name, tuple(atoms), exact

    def count(self, select: Sequence[np.ndarray]) -> np.ndarray:
        """Points counted by each combination of rows: ``select[a]`` [k_a, m_a] (the share of each
        atom that row i counts) -> [k_0, ..., k_{dim-1}]."""
        raise NotImplementedError


class _Separable(_Density):
    """A product of per-axis masses (grid lines; cells of equal expected count)."""

    def __init__(self, name: str, atoms: Sequence[_AxisAtoms], factors: Sequence[np.ndarray], exact: bool) -> None:
        super().__init__(name, atoms, exact)
        self.factors = tuple(factors)

    def count(self, select: Sequence[np.ndarray]) -> np.ndarray:
        return functools.reduce(np.multiply.outer, [s @ f for s, f in zip(select, self.factors)])


class _Cells(_Density):
    """Points per cell given as a dense tensor [m_0, ..., m_{dim-1}] (uniform sampling)."""

    def __init__(self, name: str, atoms: Sequence[_AxisAtoms], counts: np.ndarray) -> None:
        super().__init__(name, atoms, exact=False)
        self.counts = counts

    def count(self, select: Sequence[np.ndarray]) -> np.ndarray:
        out = self.counts
        for s in select:  # contract the leading atom axis; the row axis goes to the end
            out = np.tensordot(out, s, axes=([0], [1]))
        return out


class _Given(_Density):
    """Given points: point j is atom j on every axis."""

    def count(self, select: Sequence[np.ndarray]) -> np.ndarray:
        letters = "abcdefghijklmnopqrstuvwxy"[: len(select)]
        return np.einsum(",".join(f"{c}z" for c in letters) + "->" + letters, *select)


def _density(group: PointGroup, cells: Sequence[int], seed: int, epoch: int) -> _Density:
    """The atoms and counts of ``group``'s points, as :meth:`PointGroup.sample` draws them."""
    if group.given is not None:
        x = np.asarray(group.given, dtype=np.float64)
        return _Given(group.name, [_AxisAtoms(x[:, a], x[:, a]) for a in range(x.shape[1])], exact=True)
    lo, hi = np.asarray(group.lo), np.asarray(group.hi)
    free = [a for a in range(lo.size) if hi[a] > lo[a]]
    atoms = [_AxisAtoms(lo[a : a + 1], lo[a : a + 1]) for a in range(lo.size)]  # fixed axes: one coordinate
    factors = [np.ones(1) for _ in range(lo.size)]
    if not free:
        return _Separable(group.name, atoms, factors, exact=True)
    if group.method == SamplingMethod.GRID:
        shape = grid_shape(Box(lo[free], hi[free]), group.n)
        for a, n in zip(free, shape):
            line = grid_lines(lo[a], hi[a], n)
            atoms[a], factors[a] = _AxisAtoms(line, line), np.ones(n)
        return _Separable(group.name, atoms, factors, exact=True)
    n = group.n if isinstance(group.n, int) else int(np.prod(group.n))
    cell_shape = [cells[a] for a in free]
    for a, c in zip(free, cell_shape):
        edges = np.linspace(lo[a], hi[a], c + 1)
        atoms[a], factors[a] = _AxisAtoms(edges[:-1], edges[1:]), np.ones(c)
    if group.method == SamplingMethod.UNIFORM:
        counts = uniform_cell_counts(n, cell_shape, rng.stream_key(seed, group.stream, epoch)).astype(np.float64)
        return _Cells(group.name, atoms, counts.reshape([len(f) for f in factors]))
    others = float(np.prod(cell_shape[1:]))
    if group.method == SamplingMethod.HAMMERSLEY:  # exact per cell along the first free axis
        key = rng.stream_key(seed, group.stream, epoch)
        factors[free[0]] = hammersley_axis_counts(n, cell_shape[0], key) / others
    else:  # Sobol, Halton, Latin hypercube: density x volume
        factors[free[0]] = np.full(cell_shape[0], n / (cell_shape[0] * others))
    return _Separable(group.name, atoms, factors, exact=False)


class PointCounter:
    """Counts of a run's training points (every loss term, at sampling ``epoch``) in products of
    per-axis intervals, without drawing them."""

    def __init__(self, exp: Experiment, epoch: int = 0) -> None:
        self.densities = [_density(g, exp.cells, exp.cfg.run.seed, epoch) for g in exp.point_groups()]
        self.names = [d.name for d in self.densities]
        self.exact = all(d.exact for d in self.densities)

    def per_group(self, select: Callable[[_AxisAtoms, int], np.ndarray]) -> dict[str, np.ndarray]:
        """Loss term -> counts [k_0, ..., k_{dim-1}], row i of axis a counting the share
        ``select(atoms, a)[i]`` ([k_a, m_a]) of each of the term's atoms along a."""
        return {d.name: d.count([select(atoms, a) for a, atoms in enumerate(d.atoms)]) for d in self.densities}

    def count(self, select: Callable[[_AxisAtoms, int], np.ndarray]) -> np.ndarray:
        """:meth:`per_group` summed over the loss terms."""
        return sum(self.per_group(select).values())


# ---------------------------------------------------------------------------------- regions and unions
def _subdomain_intervals(level: Level, axis: int) -> Intervals:
    """A level's subdomain intervals along ``axis`` as the pairs see them: open (a point on the
    edge has window 0), and everything along an axis with a single subdomain."""
    if level.shape[axis] == 1:
        return Intervals.open(np.array([-np.inf]), np.array([np.inf]))
    return Intervals.open(*level.axis_bounds(axis))


def _owner_columns(layout: ParallelLayout, level: Level, axis: int) -> np.ndarray:
    """Block index along ``axis`` of the owner of each subdomain index along it ([shape[axis]]):
    ownership goes by the centre, per axis, as :class:`ParallelLayout` assigns it."""
    dom = layout.decomposition.domain
    return layout.axis_blocks(axis, np.clip(level.centres[axis], dom.lo[axis], dom.hi[axis]))


def owned_regions(layout: ParallelLayout, level_index: int) -> list[Intervals]:
    """Per axis, the region the subdomains owned by each block column cover on a partitioned
    level: [grid[a]] open intervals (empty for a column that owns none). The owned subdomains of
    a block are a product of contiguous index ranges whose intervals overlap, so their union is
    the box of these intervals."""
    level = layout.decomposition.levels[level_index]
    out = []
    for a in range(level.dim):
        subs = _subdomain_intervals(level, a)
        lo = np.full(layout.grid[a], np.inf)
        hi = np.full(layout.grid[a], -np.inf)
        np.minimum.at(lo, _owner_columns(layout, level, a), subs.lo)
        np.maximum.at(hi, _owner_columns(layout, level, a), subs.hi)
        out.append(Intervals.open(lo, hi))
    return out


def _pieces(regions: Sequence[Intervals]) -> tuple[Intervals, np.ndarray, int]:
    """Cut each row's line at the ends of its regions (one :class:`Intervals` [k] per region):
    every piece (an open interval between two ends, or an end itself) lies wholly inside or
    outside each region. Returns the pieces flattened ([k * S], row-major), ``inside``
    [n_regions, k, S] bool, and S."""
    k = len(regions[0])
    ends = np.stack([r.lo for r in regions] + [r.hi for r in regions], axis=1)  # [k, 2R]
    ends = np.where(np.isfinite(ends), ends, np.inf)
    ends.sort(axis=1)
    ends[:, 1:][ends[:, 1:] == ends[:, :-1]] = np.inf  # repeated ends: pad with +inf (an empty piece)
    ends.sort(axis=1)
    bounds = np.concatenate([np.full((k, 1), -np.inf), ends, np.full((k, 1), np.inf)], axis=1)
    gaps_lo, gaps_hi = bounds[:, :-1], bounds[:, 1:]  # [k, n_ends + 1] open pieces
    lo = np.concatenate([gaps_lo, ends], axis=1)
    hi = np.concatenate([gaps_hi, ends], axis=1)
    is_end = np.concatenate([np.zeros_like(gaps_lo, bool), np.isfinite(ends)], axis=1)
    s = lo.shape[1]
    inside = []
    for r in regions:
        r_lo, r_hi = r.lo[:, None], r.hi[:, None]
        inside.append(np.where(is_end, (r_lo < lo) & (lo < r_hi), (r_lo <= lo) & (hi <= r_hi)) & (r_lo < r_hi))
    pieces = Intervals(lo.reshape(-1), hi.reshape(-1), is_end.reshape(-1), is_end.reshape(-1))
    return pieces, np.stack(inside), s


def union_counts(
    counter: PointCounter, regions: Sequence[Sequence[Intervals]], within: Sequence[Intervals] | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Points in the union of boxes, for a product of rows: ``regions[j][a]`` is box j's interval
    along axis a for each of k_a rows; ``within[a]`` ([k_a] blocks) keeps only the points that
    row's block owns. Returns (points in the union, [points in box j for each j]), each
    [k_0, ..., k_{dim-1}]. Exact by cutting each axis at the boxes' ends, not by
    inclusion-exclusion over subsets."""
    dim = len(regions[0])
    cut = [_pieces([r[a] for r in regions]) for a in range(dim)]

    def select(atoms: _AxisAtoms, a: int) -> np.ndarray:
        pieces, _, s = cut[a]
        mass = atoms.mass(pieces)  # [k_a * S, m]
        return mass if within is None else mass * np.repeat(atoms.owned(within[a]), s, axis=0)

    counts = counter.count(select)  # [k_0 * S, k_1 * S, ...]
    shape = [n for a in range(dim) for n in (len(regions[0][a]), cut[a][2])]
    counts = counts.reshape(shape)
    per_box = []
    for j in range(len(regions)):
        mask = np.ones(shape, bool)
        for a in range(dim):
            view = [1] * (2 * dim)
            view[2 * a], view[2 * a + 1] = shape[2 * a], shape[2 * a + 1]
            mask = mask & cut[a][1][j].reshape(view)
        per_box.append(mask)
    union = functools.reduce(np.logical_or, per_box) if per_box else np.zeros(shape, bool)
    sum_pieces = tuple(range(1, 2 * dim, 2))
    return (counts * union).sum(sum_pieces), [(counts * m).sum(sum_pieces) for m in per_box]


# ---------------------------------------------------------------------------------- the workload
@dataclass(frozen=True)
class EvaluatedRows:
    """What the networks evaluate for each own point of a run, the one place that knows how
    ``model.derivatives`` changes the counts (used here and by :mod:`ddpinn.parallel.memory`).

    ``spec``: the jets the networks compute at every evaluated row (J per slot): the problem's
    with exact jets, the value only with finite differences. ``per_point``: rows of the
    partial-sum array, and so pairs, per own point: 1 with exact jets; with finite differences
    the stencil points of a point inside the domain (central formulas on every axis: 1 + 2·dim
    for a Laplacian, 4 more per mixed second derivative), exact there and low near the faces (see
    the module docstring). ``stencil_width``: entries per jet row of the stencil's map (K of its
    ``[n, J, K]`` tables: a one-sided formula's at a corner, which the padding takes as soon as one
    point is near a face), 0 without a stencil.
    """

    spec: JetSpec
    per_point: int
    stencil_width: int

    @classmethod
    def of(cls, exp: Experiment) -> EvaluatedRows:
        """As :func:`~ddpinn.parallel.exchange.plan.build_distributed_batch` evaluates ``exp``'s
        training points: with a stencil under ``fd`` when the problem needs derivatives."""
        fd = exp.finite_difference
        if fd is None or len(exp.spec) == 1:
            return cls(exp.spec, 1, 0)
        lo, hi = np.asarray(fd.lo, dtype=np.float64), np.asarray(fd.hi, dtype=np.float64)
        # The midpoint is at least (order + 1) steps from every face (Experiment checks the step).
        interior = fd.stencil(((lo + hi) / 2)[None, :], exp.spec)
        corner = fd.stencil(lo[None, :], exp.spec)
        return cls(interior.value_spec, interior.n_points, int(corner.index.shape[2]))


@dataclass(frozen=True)
class RankWorkload:
    """What one rank holds and evaluates in a training step. Level keys are level indices ``l``
    (0-based, as ``decomposition.levels[l]``; messages number them l + 1).

    own_points: loss term -> points the rank owns. own_rows: rows of the partial-sum array it
    evaluates for them (the own points, or their stencil points with finite differences:
    :class:`EvaluatedRows`). halo_points: other ranks' evaluated rows that its partitioned
    subdomains cover (evaluated, their partial sums sent back), and per partitioned level.
    pairs_by_level: (evaluated row, subdomain) pairs it evaluates (own rows on replicated levels,
    own + halo rows on partitioned ones). subdomains_by_level: networks it holds.
    parameters: network parameters it holds, replicated_parameters: those all-reduced.
    """

    rank: int
    own_points: dict[str, int]
    own_rows: int
    halo_points: int
    halo_points_by_level: dict[int, int]
    pairs_by_level: dict[int, int]
    subdomains_by_level: dict[int, int]
    parameters: int
    replicated_parameters: int

    @property
    def n_own(self) -> int:
        return sum(self.own_points.values())

    @property
    def n_eval(self) -> int:
        """Rows of the partial-sum array: own rows + halo points."""
        return self.own_rows + self.halo_points

    @property
    def pairs(self) -> int:
        return sum(self.pairs_by_level.values())


@dataclass(frozen=True)
class Workload:
    """Every rank's :class:`RankWorkload`; ``exact``: whether the counts are exact (grid
    sampling, given points) or expectations (random sampling: pairs and halo points)."""

    ranks: tuple[RankWorkload, ...]
    exact: bool

    @property
    def pairs_by_level(self) -> dict[int, int]:
        """Pairs per level over all ranks (the same as on one process)."""
        return {l: sum(r.pairs_by_level[l] for r in self.ranks) for l in self.ranks[0].pairs_by_level}

    @property
    def total_pairs(self) -> int:
        return sum(self.pairs_by_level.values())

    def busiest(self) -> RankWorkload:
        """The rank with the most pairs (the one every step waits for)."""
        return max(self.ranks, key=lambda r: r.pairs)

    def imbalance(self, of: Callable[[RankWorkload], float] = lambda r: r.pairs) -> float:
        """max / mean over ranks of ``of`` (pairs by default); 1 is perfect balance."""
        values = [of(r) for r in self.ranks]
        mean = sum(values) / len(values)
        return max(values) / mean if mean else 1.0


def _parameters_per_network(exp: Experiment, l: int) -> int:
    return exp.level_parameters(l) // exp.decomposition.levels[l].n_subdomains


def workload(exp: Experiment, layout: ParallelLayout, epoch: int = 0) -> Workload:
    """Every rank's workload for the training points of sampling ``epoch`` (pure; no messages).
    Pairs, halo points and own rows count evaluated rows: :attr:`EvaluatedRows.per_point` per
    point (approximate near the faces with finite differences).

    Time about Σ_levels Σ_axes (subdomains along the axis x atoms along it) plus the ranks; memory
    the same, never points x subdomains."""
    dec, dim, grid = exp.decomposition, exp.problem.dim, layout.grid
    rows = EvaluatedRows.of(exp).per_point
    counter = PointCounter(exp, epoch)
    blocks = [Intervals.blocks(layout, a) for a in range(dim)]
    own = {name: c.reshape(-1) for name, c in counter.per_group(lambda atoms, a: atoms.owned(blocks[a])).items()}

    pairs = []
    for l, level in enumerate(dec.levels):
        subs = [_subdomain_intervals(level, a) for a in range(dim)]
        if layout.is_partitioned(l):
            # Owned subdomains of a block: a product over the axes of the indices whose column it is.
            owned = [
                (np.arange(grid[a])[:, None] == _owner_columns(layout, level, a)[None, :]).astype(np.float64)
                for a in range(dim)
            ]
            counts = counter.count(lambda atoms, a, owned=owned, subs=subs: owned[a] @ atoms.mass(subs[a]))
        else:
            counts = counter.count(
                lambda atoms, a, subs=subs: atoms.mass(subs[a]).sum(0)[None, :] * atoms.owned(blocks[a])
            )
        pairs.append(rows * counts.reshape(-1))

    partitioned = [l for l in range(dec.n_levels) if layout.is_partitioned(l)]
    halo = np.zeros(layout.world_size)
    halo_by_level = {}
    if partitioned:
        regions = [owned_regions(layout, l) for l in partitioned]
        everywhere, per_level = union_counts(counter, regions)
        in_block, per_level_in = union_counts(counter, regions, blocks)
        halo = rows * (everywhere - in_block).reshape(-1)
        halo_by_level = {l: rows * (a - b).reshape(-1) for l, a, b in zip(partitioned, per_level, per_level_in)}

    per_network = [_parameters_per_network(exp, l) for l in range(dec.n_levels)]
    replicated = sum(exp.level_parameters(l) for l in range(dec.n_levels) if not layout.is_partitioned(l))
    held = [
        np.bincount(layout.owners[l], minlength=layout.world_size) if layout.is_partitioned(l)
        else np.full(layout.world_size, level.n_subdomains)
        for l, level in enumerate(dec.levels)
    ]
    ranks = tuple(
        RankWorkload(
            rank=r,
            own_points={name: int(round(c[r])) for name, c in own.items()},
            own_rows=rows * sum(int(round(c[r])) for c in own.values()),
            halo_points=int(round(halo[r])),
            halo_points_by_level={l: int(round(c[r])) for l, c in halo_by_level.items()},
            pairs_by_level={l: int(round(p[r])) for l, p in enumerate(pairs)},
            subdomains_by_level={l: int(h[r]) for l, h in enumerate(held)},
            parameters=int(sum(int(h[r]) * n for h, n in zip(held, per_network))),
            replicated_parameters=replicated,
        )
        for r in range(layout.world_size)
    )
    return Workload(ranks, exact=counter.exact)
