"""Collocation, constraint and test points, reproducible and independent of the process count.

Defines :class:`SamplingMethod`, :func:`sample_box` (the points of a box, or of a face of
it, that fall in one ownership :class:`~ddpinn.geometry.Block`) and :class:`PointGroup` (one loss
term's points before they are drawn; the workload counts them without drawing). The global point set depends
only on (method, n, seed, epoch, cell grid): grid points are a fixed lattice, ``uniform``
points are drawn per cell of a fixed cell grid from counter-based keys, Sobol/Halton
points are one global low-discrepancy sequence, and Latin hypercube and Hammersley points are
global sets of which a process computes only the part near its block (point i of either is a
function of (key, i), never of a sequence). A process asks only for its block, so runs on
different process counts see the same points. Used by the trainer's batch building.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ddpinn import rng
from ddpinn.geometry import Block, Box

__all__ = [
    "PointGroup",
    "SamplingMethod",
    "grid_lines",
    "grid_shape",
    "hammersley_axis_counts",
    "sample_box",
    "uniform_cell_counts",
]


class SamplingMethod(StrEnum):
    GRID = "grid"
    UNIFORM = "uniform"
    SOBOL = "sobol"
    HALTON = "halton"
    LHS = "lhs"
    HAMMERSLEY = "hammersley"


def grid_shape(box: Box, n: int | Sequence[int]) -> tuple[int, ...]:
    """Points per axis: ``n`` as given per axis, or a total spread in proportion to the lengths."""
    if not isinstance(n, int):
        return tuple(int(v) for v in n)
    lengths = box.lengths
    per = (n / np.prod(lengths)) ** (1 / box.dim) * lengths
    return tuple(max(1, int(round(v))) for v in per)


def grid_lines(lo: float, hi: float, n: int) -> np.ndarray:
    """The ``n`` grid coordinates of ``grid`` sampling along one axis of ``[lo, hi]``: [n] float64."""
    return np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])


def uniform_cell_counts(n: int, cells: Sequence[int], key: int) -> np.ndarray:
    """Points per cell of ``uniform`` sampling: [n_cells] int64, cells in C order. Every cell gets
    ⌊n / cells⌋ points and the remainder goes to cells ranked by a counter-based draw (so it is
    spread over the whole box, and the same whichever ranks ask)."""
    n_cells = int(np.prod(cells))
    base, extra = divmod(n, n_cells)
    lucky = np.zeros(n_cells, dtype=bool)
    if extra:
        lucky[np.argsort(rng.uniform(key ^ 0x5EED, np.arange(n_cells), 1)[:, 0], kind="stable")[:extra]] = True
    return base + lucky.astype(np.int64)


@dataclass(frozen=True, eq=False)
class PointGroup:
    """One loss term's training points before they are drawn: ``n`` points of ``method`` in the
    box ``[lo, hi]`` (a face or a point where ``lo[a] == hi[a]``) from the random stream
    ``stream``, or the ``given`` points ([n, dim] float64, a data set's)."""

    name: str
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    method: SamplingMethod
    n: int | Sequence[int]
    stream: str
    given: np.ndarray | None = None

    def sample(self, *, seed: int, epoch: int, cells: Sequence[int], block: Block | None) -> np.ndarray:
        """The points that ``block`` owns (all by default): [n_local, dim] float64."""
        if self.given is not None:
            return self.given if block is None else self.given[block.contains(self.given)]
        return sample_box(
            self.lo, self.hi, self.method, self.n, seed=seed, stream=self.stream, epoch=epoch, cells=cells, block=block
        )


def sample_box(
    lo: Sequence[float],
    hi: Sequence[float],
    method: SamplingMethod,
    n: int | Sequence[int],
    *,
    seed: int,
    stream: str,
    epoch: int = 0,
    cells: Sequence[int] | None = None,
    block: Block | None = None,
) -> np.ndarray:
    """Points of the box ``[lo, hi]`` owned by ``block`` (all by default): float64 [n_local, dim].

    A box with ``lo[a] == hi[a]`` on some axes is a face or point: those coordinates are fixed
    and the method acts on the remaining axes. ``n``: total count, or points per axis for
    ``grid``. ``cells``: the cell grid of ``uniform`` sampling (cells per free axis; default one
    cell), aligned with the ownership blocks. ``stream`` names the point set (``"pde"``,
    ``"constraint/bc"``) so that each gets its own random numbers.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    free = [a for a in range(len(lo)) if hi[a] > lo[a]]
    block = block or Block(tuple(lo), tuple(hi), (True,) * len(lo))
    if not free:
        x = lo[None, :].copy()
        return x[block.contains(x)]
    sub = Box(lo[free], hi[free])
    sub_block = Block(
        tuple(block.lo[a] for a in free), tuple(block.hi[a] for a in free), tuple(block.closed_hi[a] for a in free)
    )
    if method == SamplingMethod.GRID:
        y = _grid(sub, grid_shape(sub, n), sub_block)
    elif method == SamplingMethod.UNIFORM:
        cell_shape = tuple(cells[a] for a in free) if cells is not None else (1,) * len(free)
        y = _uniform_cells(sub, _total(n), cell_shape, rng.stream_key(seed, stream, epoch), sub_block)
    elif method in (SamplingMethod.SOBOL, SamplingMethod.HALTON):
        y = _low_discrepancy(sub, method, _total(n), rng.stream_key(seed, stream, epoch) % 2**32)
        y = y[sub_block.contains(y)]
    elif method == SamplingMethod.LHS:
        y = _latin_hypercube(sub, _total(n), rng.stream_key(seed, stream, epoch), sub_block)
    elif method == SamplingMethod.HAMMERSLEY:
        y = _hammersley(sub, _total(n), rng.stream_key(seed, stream, epoch), sub_block)
    else:
        raise ValueError(f"sampling.method: unknown method {method!r}; choose one of {[m.value for m in SamplingMethod]}")
    x = np.repeat(lo[None, :], y.shape[0], axis=0)
    x[:, free] = y
    return x[block.contains(x)]  # a face's fixed coordinate must lie in the block too


def _grid(box: Box, shape: tuple[int, ...], block: Block) -> np.ndarray:
    axes = []
    for a, n in enumerate(shape):
        line = grid_lines(box.lo[a], box.hi[a], n)
        axes.append(line[block.contains(line, axis=a)])
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=-1)


def _uniform_cells(box: Box, n: int, cells: tuple[int, ...], key: int, block: Block) -> np.ndarray:
    """``n`` uniform points, stratified over the cells (:func:`uniform_cell_counts`); each cell's
    points come from its own key."""
    edges = [np.linspace(box.lo[a], box.hi[a], c + 1) for a, c in enumerate(cells)]
    # A cell belongs to the block that owns its lower corner (blocks are aligned with cells).
    mine = [np.nonzero(block.contains(e[:-1], axis=a))[0] for a, e in enumerate(edges)]
    ids = np.ravel_multi_index(np.meshgrid(*mine, indexing="ij"), cells).reshape(-1)
    counts = uniform_cell_counts(n, cells, key)[ids]
    if counts.sum() == 0:
        return np.zeros((0, len(cells)))
    draws = rng.uniform(key, ids, len(cells) * int(counts.max())).reshape(ids.size, -1, len(cells))
    multi = np.unravel_index(ids, cells)
    lo = np.stack([edges[a][multi[a]] for a in range(len(cells))], axis=-1)
    width = np.stack([edges[a][multi[a] + 1] - edges[a][multi[a]] for a in range(len(cells))], axis=-1)
    points = lo[:, None, :] + draws * width[:, None, :]
    keep = np.arange(points.shape[1])[None, :] < counts[:, None]
    return points[keep]


def _low_discrepancy(box: Box, method: SamplingMethod, n: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    engine = qmc.Sobol(box.dim, scramble=True, seed=seed) if method == SamplingMethod.SOBOL else qmc.Halton(
        box.dim, scramble=True, seed=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sobol prefers powers of two; any n is still valid
        unit = engine.random(n)
    return np.asarray(box.lo) + unit * (np.asarray(box.hi) - np.asarray(box.lo))


def _total(n: int | Sequence[int]) -> int:
    """A total count: ``n``, or the product of points per axis."""
    return n if isinstance(n, int) else int(np.prod(n))


def _candidate_slots(box: Box, block: Block, axis: int, n: int, offset: float = 0.0) -> np.ndarray:
    """The slots m in [0, n) whose points, at unit coordinate in [(m + offset)/n, (m + offset + 1)/n)
    along ``axis``, may lie in ``block``: [k] int64, one slot of margin each side so that rounding
    cannot lose a point (the caller keeps only the points the block contains)."""
    length = box.hi[axis] - box.lo[axis]
    t_lo, t_hi = np.clip([(block.lo[axis] - box.lo[axis]) / length, (block.hi[axis] - box.lo[axis]) / length], 0, 1)
    first = max(int(np.floor(t_lo * n - offset)) - 1, 0)
    last = min(int(np.ceil(t_hi * n - offset)) + 1, n - 1)
    return np.arange(first, last + 1, dtype=np.int64)


def _to_box(box: Box, unit: np.ndarray) -> np.ndarray:
    return np.asarray(box.lo) + unit * (np.asarray(box.hi) - np.asarray(box.lo))


# ---------------------------------------------------------------------------------- Latin hypercube
_PERMUTATION_ROUNDS = 4


@dataclass(frozen=True)
class _Permutation:
    """A random permutation of [0, n) keyed by ``key``, evaluated per element in O(1) and
    inverted as cheaply: rounds of (xor a key, multiply by an odd key, xorshift), each a
    bijection of the k-bit integers (2^k >= n), walked until the value falls below n (cycle
    walking: on average < 2 steps). The same construction as Kensler's hash permutation
    (Correlated Multi-Jittered Sampling, Pixar 2013), here with an inverse."""

    n: int
    key: int

    @property
    def bits(self) -> int:
        return max(1, (self.n - 1).bit_length())

    def _round_keys(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        raw = rng.mix(np.uint64(self.key) + np.arange(2 * _PERMUTATION_ROUNDS, dtype=np.uint64))
        xors, mults = raw[:_PERMUTATION_ROUNDS], raw[_PERMUTATION_ROUNDS:] | np.uint64(1)
        shifts = [max(1, self.bits // 2) if r % 2 == 0 else max(1, self.bits // 3) for r in range(_PERMUTATION_ROUNDS)]
        return xors, mults, shifts

    def _step(self, x: np.ndarray) -> np.ndarray:
        mask = np.uint64((1 << self.bits) - 1)
        xors, mults, shifts = self._round_keys()
        for xor, mult, shift in zip(xors, mults, shifts):
            x = ((x ^ (xor & mask)) * mult) & mask
            x = x ^ (x >> np.uint64(shift))
        return x

    def _step_inverse(self, x: np.ndarray) -> np.ndarray:
        mask = np.uint64((1 << self.bits) - 1)
        xors, mults, shifts = self._round_keys()
        for xor, mult, shift in reversed(list(zip(xors, mults, shifts))):
            y = x
            for _ in range(-(-self.bits // shift)):  # undo x ^= x >> s, s bits at a time
                x = y ^ (x >> np.uint64(shift))
            x = ((x * np.uint64(pow(int(mult), -1, 2**64))) & mask) ^ (xor & mask)
        return x

    def _walk(self, x: np.ndarray, step) -> np.ndarray:
        with np.errstate(over="ignore"):
            x = step(np.asarray(x, dtype=np.uint64))
            out = np.nonzero(x >= np.uint64(self.n))[0]
            while out.size:
                x[out] = step(x[out])
                out = out[x[out] >= np.uint64(self.n)]
        return x.astype(np.int64)

    def __call__(self, i: np.ndarray) -> np.ndarray:
        """π(i): [k] int64 -> [k] int64."""
        return self._walk(i, self._step)

    def inverse(self, s: np.ndarray) -> np.ndarray:
        """π⁻¹(s): [k] int64 -> [k] int64."""
        return self._walk(s, self._step_inverse)


def _latin_hypercube(box: Box, n: int, key: int, block: Block) -> np.ndarray:
    """``n`` Latin hypercube points (n strata per axis, one point in each; uniform inside its
    stratum) that ``block`` owns, in the global order: [n_local, dim].

    Point i lies in stratum i along the first axis and π_a(i) along axis a >= 1 (keyed
    permutations), at the jitter u[i] = uniform(key, i). The block's points are found from the
    axis along which it spans the fewest strata: the i of those strata (π_a⁻¹), then a filter on
    the other axes, so the cost is n x (the block's smallest fraction along an axis), vectorised.
    """
    dim = box.dim
    axis_keys = rng.mix(np.uint64(key) ^ np.arange(dim, dtype=np.uint64))
    perms = [None] + [_Permutation(n, int(axis_keys[a])) for a in range(1, dim)]
    slots = [_candidate_slots(box, block, a, n) for a in range(dim)]
    a = int(np.argmin([s.size for s in slots]))
    i = np.sort(slots[a] if a == 0 else perms[a].inverse(slots[a]))
    strata = np.stack([i] + [p(i) for p in perms[1:]], axis=-1)  # [k, dim]
    y = _to_box(box, (strata + rng.uniform(key, i, dim)) / n)
    return y[block.contains(y)]


# ---------------------------------------------------------------------------------- Hammersley
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)


def _digit_mirror(j: np.ndarray, base: int) -> np.ndarray:
    """φ_b(j) digit by digit: [k] int64 -> [k] float64."""
    j, out, scale = j.copy(), np.zeros(j.shape), 1.0 / base
    while j.any():
        j, digit = np.divmod(j, base)
        out += digit * scale
        scale /= base
    return out


def _radical_inverse(i: np.ndarray, base: int) -> np.ndarray:
    """φ_b(i): the base-b digits of i mirrored about the point, [k] int64 -> [k] float64 in [0, 1).
    Several digits per pass through a table of φ_b below base^k ≈ 4096 (two passes for 10^6
    points instead of twenty in base 2)."""
    digits = max(1, int(np.log(4096) / np.log(base)))
    chunk = base**digits
    table = _digit_mirror(np.arange(chunk), base)
    i, out, scale = i.copy(), np.zeros(i.shape), 1.0
    while i.any():
        i, low = np.divmod(i, chunk)
        out += table[low] * scale
        scale /= chunk
    return out


def _hammersley_shift(key: int, dim: int) -> np.ndarray:
    """The Cranley–Patterson rotation δ of a Hammersley set: [dim] uniform in [0, 1)."""
    return rng.uniform(key ^ 0x4A33, np.zeros(1, dtype=np.int64), dim)[0]


def _first_axis_offset(n: int, shift: float) -> tuple[int, float]:
    """(i/n + δ) mod 1 = (m + f)/n with m = (i + k) mod n: returns (k, f) for δ = ``shift``."""
    k = int(np.floor(shift * n))
    return k, shift * n - k


def _hammersley(box: Box, n: int, key: int, block: Block) -> np.ndarray:
    """The ``n``-point Hammersley set, rotated by δ (:func:`_hammersley_shift`), that ``block``
    owns: [n_local, dim], in order along the first axis.

    Point i is ((i/n + δ_0) mod 1, (φ_2(i) + δ_1) mod 1, (φ_3(i) + δ_2) mod 1, ...) in unit
    coordinates (radical inverses in the primes). The rotation is what makes a seed or a
    resampling epoch give a new set: the unrotated set is one fixed set. Along the first axis
    the points are evenly spaced, so the block's indices follow from its range there: the cost
    is n x (the block's fraction along the first axis)."""
    if box.dim > len(_PRIMES) + 1:
        raise ValueError(f"sampling.method: hammersley supports up to {len(_PRIMES) + 1} axes, got {box.dim}")
    shift = _hammersley_shift(key, box.dim)
    k, f = _first_axis_offset(n, shift[0])
    m = _candidate_slots(box, block, 0, n, offset=f)
    i = (m - k) % n
    unit = [(m + f) / n] + [(_radical_inverse(i, b) + d) % 1.0 for b, d in zip(_PRIMES, shift[1:])]
    y = _to_box(box, np.stack(unit, axis=-1))
    return y[block.contains(y)]


def hammersley_axis_counts(n: int, cells: int, key: int) -> np.ndarray:
    """Points of the ``n``-point Hammersley set of ``key`` in each of ``cells`` equal cells along
    its first axis: [cells] int64, exact (up to a point within rounding of a cell edge), from the
    rotation alone (the points are evenly spaced there)."""
    _, f = _first_axis_offset(n, _hammersley_shift(key, 1)[0])
    below = np.clip(np.ceil(np.arange(cells + 1) * n / cells - f), 0, n).astype(np.int64)  # (m + f)/n < j/cells
    below[-1] = n
    return np.diff(below)
