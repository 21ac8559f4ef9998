"""Window functions of FBPINN subdomains, with exact derivatives of any order.

A window is a product over axes of a 1-D *profile* f(t) of the normalised coordinate
``t = (x - centre) / (width / 2)``, zero for |t| >= 1. Its derivative with respect to the
physical coordinate is ``f^(k)(t) / (width/2)^k``. Used by :mod:`ddpinn.geometry.coverage`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import Tensor

__all__ = ["WindowKind", "CosineWindow", "SigmoidWindow", "make_window", "Window"]


class WindowKind(StrEnum):
    COSINE = "cosine"
    SIGMOID = "sigmoid"


class Window:
    """Interface: ``profile(t, order)`` returns ``[f(t), f'(t), ..., f^(order)(t)]`` (same shape as t)."""

    kind: WindowKind

    def profile(self, t: Tensor, order: int) -> list[Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class CosineWindow(Window):
    """f(t) = ((1 + cos πt) / 2)² = cos⁴(πt/2) for |t| < 1 (Moseley et al.; C¹ at the edge).

    The value is computed as cos⁴(πt/2), which keeps full relative precision near the edge; the
    derivatives use the expansion 3/8 + cos(πt)/2 + cos(2πt)/8, closed-form for every order.
    """

    kind: WindowKind = WindowKind.COSINE

    def profile(self, t: Tensor, order: int) -> list[Tensor]:
        u = math.pi * t
        inside = (t.abs() < 1).to(t.dtype)
        out = []
        for k in range(order + 1):
            shift = k * math.pi / 2
            if k == 0:
                value = torch.cos(u / 2) ** 4
            else:
                value = math.pi**k * (torch.cos(u + shift) / 2 + 2**k * torch.cos(2 * u + shift) / 8)
            out.append(value * inside)
        return out


@dataclass(frozen=True)
class SigmoidWindow(Window):
    """f(t) = σ((t + r)/s) · σ((r - t)/s), truncated to |t| < 1 (the legacy FBPINN window).

    ``core`` (r) is where the window falls to ~1/2; ``s`` is chosen so that f(±1) ≈ ``edge_value``,
    which keeps the truncation jump below that value.
    """

    core: float = 0.5
    edge_value: float = 1e-3
    kind: WindowKind = WindowKind.SIGMOID

    def __post_init__(self) -> None:
        if not 0 < self.core < 1:
            raise ValueError(f"decomposition.sigmoid_core: must be in (0, 1), got {self.core}")
        if not 0 < self.edge_value < 0.5:
            raise ValueError(f"decomposition.sigmoid_edge_value: must be in (0, 0.5), got {self.edge_value}")

    @property
    def sharpness(self) -> float:
        return (1 - self.core) / math.log(1 / self.edge_value)

    def profile(self, t: Tensor, order: int) -> list[Tensor]:
        s = self.sharpness
        left = _sigmoid_derivatives((t + self.core) / s, order)
        right = _sigmoid_derivatives((self.core - t) / s, order)
        inside = (t.abs() < 1).to(t.dtype)
        out = []
        for k in range(order + 1):
            # d^k/dt^k of σ(a(t))σ(b(t)), a' = 1/s, b' = -1/s: Leibniz in one variable.
            total = sum(
                math.comb(k, j) * left[j] * right[k - j] * (-1) ** (k - j) for j in range(k + 1)
            )
            out.append(total / s**k * inside)
        return out


def _sigmoid_derivatives(x: Tensor, order: int) -> list[Tensor]:
    """σ^(k)(x) for k = 0..order, from the polynomials P_k(σ) with P_{k+1} = P_k' · σ(1-σ)."""
    sig = torch.sigmoid(x)
    poly = np.polynomial.Polynomial([0.0, 1.0])
    logistic = np.polynomial.Polynomial([0.0, 1.0, -1.0])
    out = []
    for _ in range(order + 1):
        value = torch.zeros_like(sig)
        for c in reversed(poly.coef):
            value = value * sig + float(c)
        out.append(value)
        poly = poly.deriv() * logistic
    return out


def make_window(kind: str, **options: float) -> Window:
    """Build a window by name (``cosine`` or ``sigmoid``)."""
    if kind == WindowKind.COSINE:
        return CosineWindow()
    if kind == WindowKind.SIGMOID:
        return SigmoidWindow(**options)
    raise ValueError(f"decomposition.window: unknown window {kind!r}; choose one of {[k.value for k in WindowKind]}")
