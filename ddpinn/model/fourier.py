"""Fourier-feature inputs of the subdomain networks (Tancik et al. 2020; jaxpi's default embedding).

Defines :class:`FourierFeatures` (how many frequencies, their scale per input axis, whether they
are trained),
:func:`draw_frequencies` (B per subdomain from the run's seed, independent of the rank count) and
:func:`feature_derivatives` (the feature map's derivatives of every order). Used by
:class:`ddpinn.model.mlp.StackedMLP`.

A subdomain network with Fourier features sees, instead of its normalised input x̂ ([dim]),

    φ(x̂) = [sin(θ), cos(θ)],   θ = 2π B x̂,   B: [m, dim],  B[:, a] ~ N(0, σ_a²),

2m features. One σ for every axis is the usual isotropic map; a σ per axis suits inputs whose
solution oscillates at very different rates along different axes (a conditioned parameter such
as ω in sin(ωx): tens of radians across its range far from x = 0, against a few along x). θ is linear in x̂ (no bias) and cos θ = sin(θ + π/2), so the map is a first layer
of 2m units with weights [2πB; 2πB], biases [0; π/2] and activation sin, whose k-th derivative is
sin(θ + kπ/2). The network's jet code treats it exactly like a dense first layer: the per-unit
constants dθ/dx_a = 2π B[:, a] · (2/width_a) are folded into the next layer's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddpinn import rng

__all__ = ["FourierFeatures", "draw_frequencies", "feature_derivatives"]


@dataclass(frozen=True)
class FourierFeatures:
    """The Fourier-feature map of every subdomain network of a run."""

    features: int
    """m, the frequencies per network (the network's first dense layer sees 2m inputs)."""
    sigma: float | tuple[float, ...]
    """Standard deviation of the entries of B, in cycles per unit of the normalised input: one for
    every axis, or one per input axis (σ_a scales column a of B)."""
    trainable: bool = False
    """B is a trained parameter (else fixed at its draw)."""

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f"network.fourier.features: need at least 1 frequency, got {self.features}")
        sigmas = self.sigma if isinstance(self.sigma, tuple) else (self.sigma,)
        if not sigmas or not all(s > 0 and math.isfinite(s) for s in sigmas):
            raise ValueError(f"network.fourier.sigma: must be > 0 (each, if one per axis), got {self.sigma}")

    @property
    def width(self) -> int:
        """Number of features the first dense layer sees: 2m."""
        return 2 * self.features

    def sigma_per_axis(self, dim: int) -> np.ndarray:
        """σ_a of each of ``dim`` input axes: [dim] float64 (a single σ repeated)."""
        if not isinstance(self.sigma, tuple):
            return np.full(dim, float(self.sigma))
        if len(self.sigma) != dim:
            raise ValueError(f"network.fourier.sigma: {len(self.sigma)} per-axis values for {dim} input axes")
        return np.asarray(self.sigma, dtype=np.float64)


def draw_frequencies(fourier: FourierFeatures, seed: int, level: int, subdomain_ids: np.ndarray, dim: int) -> np.ndarray:
    """B of each subdomain: [len(subdomain_ids), m, dim] float64, column a ~ N(0, σ_a²), row i a
    function of (seed, level, subdomain_ids[i]) only, so a subdomain's B is the same whichever rank
    holds it. The same standard normal draws whatever σ: a per-axis σ rescales B's columns."""
    ids = np.asarray(subdomain_ids, dtype=np.int64)
    draws = rng.normal(rng.stream_key(seed, "fourier", level), ids, fourier.features * dim)
    return draws.reshape(len(ids), fourier.features, dim) * fourier.sigma_per_axis(dim)


def feature_derivatives(theta: Tensor, order: int) -> list[Tensor]:
    """d^k/dθ^k of [sin θ, cos θ] for k = 0..order: each [S, 2m, P] from ``theta`` [S, m, P].

    sin^(k)(θ) = sin(θ + kπ/2) and cos^(k)(θ) = sin^(k+1)(θ): one sin and one cos of θ give all."""
    s, c = torch.sin(theta), torch.cos(theta)
    cycle = (s, c, -s, -c) if order >= 1 else (s, c)
    return [torch.cat([cycle[k % 4], cycle[(k + 1) % 4]], dim=1) for k in range(order + 1)]
