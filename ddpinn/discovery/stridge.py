"""Sequential thresholded ridge regression (STRidge, Rudy et al. 2017) on normal equations.

Defines :class:`NormalEquations` (ΘᵀΘ, Θᵀy, yᵀy and the point count: sums over points, so that
ranks add theirs with one all-reduce and every rank then solves the same system) and
:func:`stridge`, which returns a :class:`SparseFit`. Used by the alternation of equation discovery.

The regression is done on normalised columns: with s_k = RMS of θ_k and s_y = RMS of y over the
points, ξ̂_k = ξ_k s_k / s_y is the size of term k's contribution relative to the target's. So the
threshold ``tolerance`` reads "drop a term that contributes less than ``tolerance`` × RMS(y)",
whatever the scales of the columns (u_xx near a shock is ~10⁴ times u). Steps:

1. ξ̂ = (Ĝ_SS + λ I)⁻¹ b̂_S on the current support S (all non-zero columns at first), λ = ``ridge``;
2. drop from S every term with |ξ̂_k| < ``tolerance``; stop when none is dropped;
3. ξ̂ on the final support by least squares without the ridge (as Rudy et al.'s code does: the
   ridge only guides the selection), and ξ_k = ξ̂_k s_y / s_k.

The tolerance is fixed by the caller (no search over tolerances as in Rudy et al.'s TrainSTRidge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NormalEquations", "SparseFit", "stridge"]


@dataclass(frozen=True)
class NormalEquations:
    """Sums over points of a least-squares problem y ≈ Θ ξ: ``gram`` = ΘᵀΘ [K, K], ``rhs`` = Θᵀy
    [K], ``target_sq`` = yᵀy, ``count`` = number of points (float64 throughout)."""

    gram: np.ndarray
    rhs: np.ndarray
    target_sq: float
    count: float

    @classmethod
    def from_flat(cls, flat: np.ndarray, n_terms: int) -> NormalEquations:
        """Inverse of :meth:`flat` (a vector [K² + K + 2])."""
        k2 = n_terms * n_terms
        return cls(flat[:k2].reshape(n_terms, n_terms), flat[k2 : k2 + n_terms], float(flat[-2]), float(flat[-1]))

    def flat(self) -> np.ndarray:
        """Everything in one vector [K² + K + 2], to all-reduce at once."""
        return np.concatenate([self.gram.reshape(-1), self.rhs, [self.target_sq, self.count]])


@dataclass(frozen=True)
class SparseFit:
    """The result of :func:`stridge`: ``coefficients`` [K] (zero off the support), ``support`` [K]
    bool, the normalised coefficients ξ̂ [K] that were thresholded, and the number of
    threshold passes."""

    coefficients: np.ndarray
    support: np.ndarray
    normalised: np.ndarray
    passes: int


def stridge(eqs: NormalEquations, tolerance: float, ridge: float = 1e-5, max_passes: int = 25) -> SparseFit:
    """STRidge on ``eqs`` (see the module docstring); ``tolerance`` >= 0, ``ridge`` >= 0."""
    n_terms = eqs.rhs.shape[0]
    if eqs.count <= 0 or eqs.target_sq <= 0:
        zero = np.zeros(n_terms)
        return SparseFit(zero, np.zeros(n_terms, dtype=bool), zero, 0)
    scale = np.sqrt(np.maximum(np.diag(eqs.gram), 0.0) / eqs.count)  # RMS of each column
    target_scale = np.sqrt(eqs.target_sq / eqs.count)
    support = scale > 0
    safe = np.where(support, scale, 1.0)
    gram = eqs.gram / (eqs.count * np.outer(safe, safe))
    rhs = eqs.rhs / (eqs.count * safe * target_scale)

    def solve(mask: np.ndarray, lam: float) -> np.ndarray:
        xi = np.zeros(n_terms)
        if mask.any():
            a = gram[np.ix_(mask, mask)] + lam * np.eye(int(mask.sum()))
            xi[mask] = np.linalg.lstsq(a, rhs[mask], rcond=None)[0]
        return xi

    passes = 0
    for passes in range(1, max_passes + 1):
        xi = solve(support, ridge)
        keep = support & (np.abs(xi) >= tolerance)
        if np.array_equal(keep, support):
            break
        support = keep
    normalised = solve(support, 0.0)
    return SparseFit(normalised * target_scale / safe, support, normalised, passes)
