"""Activation functions with their derivatives of any order, as the network jets need them, and
Jagtap's adaptive slopes.

``derivatives(z, order)`` returns ``[σ(z), σ'(z), ..., σ^(order)(z)]``, differentiable in z.
:class:`AdaptiveSlope` describes locally adaptive activations σ(n·a·z) (Jagtap, Kawaguchi,
Karniadakis 2020: layer-wise and neuron-wise), which :class:`ddpinn.model.mlp.StackedMLP`
applies by scaling the layer's weights and bias by n·a, so the jets stay exact. Used by
:mod:`ddpinn.model.mlp`.
"""

from __future__ import annotations

from enum import StrEnum

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["ActivationKind", "Activation", "AdaptiveKind", "AdaptiveSlope", "Tanh", "Sin", "make_activation"]


class ActivationKind(StrEnum):
    TANH = "tanh"
    SIN = "sin"


class AdaptiveKind(StrEnum):
    """Which units share one trainable slope a: every unit of a hidden layer, or each unit alone."""

    LAYER = "layer"
    NEURON = "neuron"


@dataclass(frozen=True)
class AdaptiveSlope:
    """Hidden units compute σ(n·a·z), a trainable per subdomain and per layer (``layer``) or per
    unit (``neuron``), initialised to 1/n so that n·a = 1 at the start."""

    kind: AdaptiveKind
    scale: float
    """n ≥ 1 in the papers: a larger n makes the slope learn faster (its gradient is n times larger)."""

    def __post_init__(self) -> None:
        if self.kind not in tuple(AdaptiveKind):
            raise ValueError(f"network.adaptive_activation.kind: {self.kind!r} is not one of {[k.value for k in AdaptiveKind]}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"network.adaptive_activation.scale: must be > 0, got {self.scale}")

    def slopes_per_layer(self, width: int) -> int:
        """Trainable slopes of one hidden layer of ``width`` units in one network."""
        return 1 if self.kind == AdaptiveKind.LAYER else width


class Activation:
    kind: ActivationKind

    def derivatives(self, z: Tensor, order: int) -> list[Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


def _tanh(z: Tensor) -> Tensor:
    if z.dtype == torch.float32 and z.device.type == "cpu":
        # On CPU, ATen's float32 tanh is ~10x slower than its sigmoid; 2σ(2z)-1 agrees to ~1e-7.
        return torch.sigmoid(z * 2).mul_(2).sub_(1)
    return torch.tanh(z)


def _tanh_polynomials(order: int) -> list[np.polynomial.Polynomial]:
    """P_k with tanh^(k)(z) = P_k(tanh z): P_0 = t, P_{k+1} = P_k' · (1 - t²)."""
    polys = [np.polynomial.Polynomial([0.0, 1.0])]
    sech2 = np.polynomial.Polynomial([1.0, 0.0, -1.0])
    for _ in range(order):
        polys.append(polys[-1].deriv() * sech2)
    return polys


def _sech2(t: Tensor) -> Tensor:
    return torch.addcmul(torch.ones((), dtype=t.dtype, device=t.device), t, t, value=-1)


def _tanh_derivative(k: int, t: Tensor, sech2: Tensor) -> Tensor:
    """tanh^(k) from t = tanh z and sech2 = 1 - t², using short factorised forms for k <= 3."""
    if k == 1:
        return sech2
    if k == 2:
        return (t * sech2).mul_(-2)
    if k == 3:
        return (sech2 * 3 - 2).mul_(sech2).mul_(-2)
    value = torch.zeros_like(t)
    for c in reversed(_tanh_polynomials(k)[k].coef):
        value = value.mul_(t).add_(float(c))
    return value


class _TanhJet(torch.autograd.Function):
    """z -> (tanh z, tanh' z, ..., tanh^(order) z) with a one-pass backward Σ_k g_k tanh^(k+1)(z)."""

    @staticmethod
    def forward(z: Tensor, order: int) -> tuple[Tensor, ...]:  # type: ignore[override]
        t = _tanh(z)
        if order == 0:
            return (t,)
        sech2 = _sech2(t)
        return (t, sech2, *(_tanh_derivative(k, t, sech2) for k in range(2, order + 1)))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, order = inputs
        ctx.order = order
        ctx.save_for_backward(*output[:2])

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, None]:  # type: ignore[override]
        t, *rest = ctx.saved_tensors
        sech2 = rest[0] if rest else _sech2(t)
        g = list(grads) + [None] * (3 - len(grads))
        if len(grads) <= 3:
            # dz = sech2 · (g0 - 2t·g1 + (4 - 6·sech2)·g2), written to touch each tensor once.
            inner = g[0] if g[0] is not None else torch.zeros_like(t)
            if g[1] is not None:
                inner = torch.addcmul(inner, g[1], t, value=-2)
            if g[2] is not None:
                inner = torch.add(inner, g[2], alpha=4).addcmul_(g[2], sech2, value=-6)
            return inner.mul(sech2), None
        dz = None
        for k, gk in enumerate(grads):
            if gk is not None:
                term = gk * _tanh_derivative(k + 1, t, sech2)
                dz = term if dz is None else dz.add_(term)
        return dz, None


class Tanh(Activation):
    kind = ActivationKind.TANH

    def derivatives(self, z: Tensor, order: int) -> list[Tensor]:
        return list(_TanhJet.apply(z, order))


class Sin(Activation):
    """SIREN-style sin activation: sin^(k)(z) = sin(z + kπ/2)."""

    kind = ActivationKind.SIN

    def derivatives(self, z: Tensor, order: int) -> list[Tensor]:
        s, c = torch.sin(z), torch.cos(z)
        return [(s, c, -s, -c)[k % 4] for k in range(order + 1)]


def make_activation(name: str) -> Activation:
    if name == ActivationKind.TANH:
        return Tanh()
    if name == ActivationKind.SIN:
        return Sin()
    raise ValueError(f"network.activation: unknown activation {name!r}; choose one of {[k.value for k in ActivationKind]}")

