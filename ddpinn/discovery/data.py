"""Observations for equation discovery: read from a file or sampled from an exact solution.

Defines :class:`Observations` (points and observed values), :func:`read_observations` (npz, csv
or HDF5 with one column per input axis and one for the field) and :func:`sample_exact` (a
registered problem's exact solution on a grid or at random points, plus relative Gaussian noise),
and :func:`check_observations` (inside the domain, finite). Used by the discovery problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpinn.geometry import Box
from ddpinn.problems.base import ProblemError

__all__ = ["Observations", "check_observations", "read_observations", "sample_exact"]


@dataclass(frozen=True, eq=False)
class Observations:
    """``x``: [n, dim] points, ``values``: [n, 1] observed field values (float64)."""

    x: np.ndarray
    values: np.ndarray


def read_observations(path: Path, inputs: Sequence[str], field: str) -> Observations:
    """Columns named by ``inputs`` and ``field`` from ``path``: an ``.npz`` (1-D arrays of those
    names), a ``.csv`` (a header row with those names; other columns ignored) or an ``.h5``/``.hdf5``
    (1-D datasets of those names at the root)."""
    where = "problem.params.data_file"
    if not path.exists():
        raise ProblemError(f"{where}: {str(path)!r} not found")
    names = [*inputs, field]
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as f:
            columns = {n: f[n] for n in names if n in f.files}
    elif suffix == ".csv":
        table = np.genfromtxt(path, delimiter=",", names=True)
        columns = {n: table[n] for n in names if n in (table.dtype.names or ())}
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            columns = {n: f[n][()] for n in names if n in f}
    else:
        raise ProblemError(f"{where}: {path.name!r} is not .npz, .csv or .h5")
    missing = [n for n in names if n not in columns]
    if missing:
        raise ProblemError(f"{where}: {path.name} has no column {missing[0]!r}; it needs columns {names}")
    arrays = [np.asarray(columns[n], dtype=np.float64).reshape(-1) for n in names]
    if len({a.size for a in arrays}) != 1:
        raise ProblemError(f"{where}: the columns {names} of {path.name} differ in length")
    return Observations(np.stack(arrays[:-1], axis=1), arrays[-1][:, None])


def sample_exact(
    exact: Callable[[torch.Tensor], torch.Tensor], box: Box, points: int | Sequence[int], noise: float, seed: int
) -> Observations:
    """``exact`` at a grid (``points`` per axis, end points included) or at ``points`` uniform
    random points of ``box``, plus noise: u + noise · std(u) · N(0, 1), independent per point
    (``noise`` is relative to the standard deviation of the clean values, as in Raissi et al.
    2019 and Chen et al. 2021). Random points and noise come from ``seed``."""
    gen = np.random.default_rng(seed)
    lo, hi = np.asarray(box.lo, dtype=np.float64), np.asarray(box.hi, dtype=np.float64)
    if isinstance(points, int):
        x = lo + (hi - lo) * gen.random((points, lo.size))
    else:
        axes = [np.linspace(a, b, n) for a, b, n in zip(lo, hi, points)]
        x = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    clean = exact(torch.as_tensor(x)).detach().cpu().double().numpy().reshape(-1, 1)
    values = clean + noise * clean.std() * gen.standard_normal(clean.shape)
    return Observations(x, values)


def check_observations(obs: Observations, box: Box, inputs: Sequence[str], where: str) -> None:
    """Raise :class:`ProblemError` naming ``where`` if a value is not finite or a point lies
    outside ``box`` (by more than 1e-12 of an axis length)."""
    bad = ~np.isfinite(obs.values).all(axis=1) | ~np.isfinite(obs.x).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ProblemError(
            f"{where}: {int(bad.sum())} observation(s) are NaN or infinite (the first at row {i}: "
            f"x = {obs.x[i].tolist()}, value {obs.values[i].tolist()}); remove them"
        )
    lo, hi = np.asarray(box.lo), np.asarray(box.hi)
    slack = 1e-12 * (hi - lo)
    outside = ((obs.x < lo - slack) | (obs.x > hi + slack)).any(axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        raise ProblemError(
            f"{where}: {int(outside.sum())} observation(s) lie outside the domain "
            f"{dict(zip(inputs, zip(lo.tolist(), hi.tolist())))} (the first at row {i}: x = {obs.x[i].tolist()})"
        )
    if obs.x.shape[0] == 0:
        raise ProblemError(f"{where}: no observations")
