"""Weighted draws without replacement over points spread across ranks, independent of the rank count.

Efraimidis–Spirakis: point i with weight p_i > 0 gets the key log(u_i) / p_i, u_i uniform in
(0, 1]; the k largest keys are a weighted sample of k points without replacement. Here u_i is a
counter-based function of the point's coordinates (and the event), so each point gets the same
key on any rank, and the k-th largest key over all ranks is found by histogram refinement with
sum all-reduces of a fixed-size count vector: the selection is the same on 1 rank or many, and
the traffic does not grow with the number of points.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpinn import rng
from ddpinn.parallel.comm import Communicator

__all__ = ["point_uniforms", "sampling_keys", "select_top"]

_BINS = 1024


def point_uniforms(key: int, x: np.ndarray) -> np.ndarray:
    """A uniform (0, 1] value per point that depends only on ``key`` and the point's float64
    coordinates: [n]."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    bits = x.view(np.uint64).reshape(x.shape[0], -1)
    ids = np.zeros(x.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in range(bits.shape[1]):
            ids = rng.mix(ids ^ bits[:, a]) + np.uint64(a + 1)
    return 1.0 - rng.uniform(key, ids, 1)[:, 0]


def sampling_keys(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Efraimidis–Spirakis keys log(u) / p (−inf where p = 0): the k largest are a weighted sample."""
    with np.errstate(divide="ignore"):
        return np.where(weights > 0, np.log(uniforms) / np.where(weights > 0, weights, 1.0), -np.inf)


def select_top(values: np.ndarray, k: int, comm: Communicator) -> np.ndarray:
    """Boolean mask [n] of this rank's values among the ``k`` largest finite values over all ranks
    (every finite one if there are fewer). Exact for distinct values; a collective."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    stats = comm.allgather_object(
        (int(finite.sum()), float(values[finite].min()) if finite.any() else np.inf,
         float(values[finite].max()) if finite.any() else -np.inf)
    )
    if k >= sum(s[0] for s in stats):
        return finite
    lo, hi = min(s[1] for s in stats), max(s[2] for s in stats)
    above = 0
    # Invariant: the k-th largest value lies in [lo, hi] and exactly `above` values exceed hi.
    for _ in range(64):
        if lo >= hi:
            break
        edges = np.linspace(lo, hi, _BINS + 1)
        inside = values[finite & (values >= lo) & (values <= hi)]
        local = np.histogram(inside, bins=edges)[0].astype(np.float64)
        counts = comm.all_reduce_sum(torch.from_numpy(local)).numpy()[::-1]  # highest bin first
        cum = above + np.cumsum(counts)
        j = int(np.searchsorted(cum, k))  # the first bin, from the top, where the count reaches k
        bin_lo, bin_hi = edges[_BINS - 1 - j], edges[_BINS - j]
        if cum[j] == k:
            return finite & (values >= bin_lo)
        above = int(cum[j - 1]) if j else above
        # Bins are half-open [a, b) except the top one, which is closed.
        lo, hi = bin_lo, (np.nextafter(bin_hi, -np.inf) if j else hi)
    return finite & (values >= lo)  # ties at float resolution: a few more than k, never fewer
