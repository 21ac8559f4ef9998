"""All subdomain networks of one level as one batched computation.

Defines :class:`StackedMLP`: fully connected networks with parameters stacked on a leading
subdomain axis, evaluated with forward-mode input-derivative jets, optionally with Fourier-feature
inputs (:mod:`ddpinn.model.fourier`) and adaptive activation slopes
(:class:`~ddpinn.model.activations.AdaptiveSlope`); and :func:`network_parameters`, the trainable
parameter count of one such network. Used by :class:`ddpinn.model.fbpinn.FBPINN` and the cost
models (through :meth:`ddpinn.build.Experiment.level_parameters`).

Layout is feature-major, ``[subdomain, feature, point]``: on CPU, batched matrix products with
the long point axis last are an order of magnitude faster than point-major ones for these small
widths, and the point axis stays contiguous for the element-wise activation work.

Jets: the input layer is affine in x, so its pre-activation derivatives ``dz/dx_a = W[:, a] · 2/width_a``
are constants per subdomain and its second derivatives vanish. The input layer's jet rows
are therefore ``σ^(m)(z) · Π_{a∈α} dz/dx_a``, and the next layer's product with them folds that
per-unit constant into its weights, so no ``[S, J, H, P]`` tensor is formed for the input layer.
With Fourier features the input layer is the feature map θ = 2πB x̂ → [sin θ, cos θ] (affine, then
an element-wise function with closed-form derivatives), folded the same way into the first dense
layer; every later layer takes the generic Faà di Bruno path.

Adaptive slopes: σ(n·a·(W h + b)) = σ((n·a·W) h + n·a·b), so a hidden layer with slope a is
evaluated as a plain layer with weights and bias scaled by n·a (per layer or per unit). The jet
code is exact for any weights, so the jets stay exact and autograd carries the gradient to a.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ddpinn import rng
from ddpinn.jets import JetSpec
from ddpinn.model.activations import Activation, AdaptiveSlope
from ddpinn.model.fourier import FourierFeatures, draw_frequencies, feature_derivatives

__all__ = ["StackedMLP", "dense_sizes", "network_parameters"]


def dense_sizes(sizes: Sequence[int], fourier: FourierFeatures | None) -> tuple[int, ...]:
    """Layer sizes of the dense layers: ``sizes`` (``[dim, hidden..., out]``) with the input
    replaced by the 2m Fourier features when there are any."""
    sizes = tuple(int(s) for s in sizes)
    return sizes if fourier is None else (fourier.width, *sizes[1:])


def network_parameters(
    sizes: Sequence[int], fourier: FourierFeatures | None = None, adaptive: AdaptiveSlope | None = None
) -> int:
    """Trainable parameters of one network of layer sizes ``sizes`` (``[dim, hidden..., out]``):
    weights and biases, B ([m, dim]) if the Fourier frequencies are trained, and the slopes."""
    dense = dense_sizes(sizes, fourier)
    count = sum(a * b + b for a, b in zip(dense[:-1], dense[1:]))
    if fourier is not None and fourier.trainable:
        count += fourier.features * int(sizes[0])
    if adaptive is not None:
        count += sum(adaptive.slopes_per_layer(width) for width in dense[1:-1])
    return count


class StackedMLP(nn.Module):
    """``n_subdomains`` MLPs of layer sizes ``sizes`` (``[in, hidden..., out]``), stacked.

    ``weights[k]``: [n_subdomains, dense[k+1], dense[k]]; ``biases[k]``: [n_subdomains, dense[k+1], 1],
    ``dense`` = :func:`dense_sizes` (the input size is 2m with Fourier features).
    ``frequencies``: B, [n_subdomains, m, in] (a parameter if trained, else a buffer; None without
    Fourier features). ``slopes[k]``: a of hidden layer k, [n_subdomains, 1 or width, 1] (empty
    without adaptive activations).
    """

    def __init__(
        self,
        n_subdomains: int,
        sizes: Sequence[int],
        activation: Activation,
        dtype: torch.dtype,
        *,
        fourier: FourierFeatures | None = None,
        adaptive: AdaptiveSlope | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) < 3:
            raise ValueError(f"network.hidden: need at least one hidden layer, got sizes {list(sizes)}")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation = activation
        self.fourier = fourier
        self.adaptive = adaptive
        dense = dense_sizes(self.sizes, fourier)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(n_subdomains, n_out, n_in, dtype=dtype))
            for n_in, n_out in zip(dense[:-1], dense[1:])
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(n_subdomains, n_out, 1, dtype=dtype)) for n_out in dense[1:]
        )
        frequencies = None
        if fourier is not None:
            frequencies = torch.zeros(n_subdomains, fourier.features, self.sizes[0], dtype=dtype)
        if fourier is not None and fourier.trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.slopes = nn.ParameterList(
            nn.Parameter(torch.zeros(n_subdomains, adaptive.slopes_per_layer(width), 1, dtype=dtype))
            for width in (dense[1:-1] if adaptive is not None else ())
        )

    @property
    def n_subdomains(self) -> int:
        return self.weights[0].shape[0]

    def checkpoint_tensors(self) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, Tensor]]]:
        """(trained, fixed) stacked tensors by checkpoint leaf name: ``W<k>``, ``b<k>`` (dense
        layer k), ``a<k>`` (slope of hidden layer k), ``B`` (Fourier frequencies; fixed unless
        trained, stored either way so that a resumed run keeps the exact map)."""
        trained = [(f"W{k}", w) for k, w in enumerate(self.weights)] + [(f"b{k}", b) for k, b in enumerate(self.biases)]
        trained += [(f"a{k}", a) for k, a in enumerate(self.slopes)]
        fixed: list[tuple[str, Tensor]] = []
        if self.frequencies is not None:
            (trained if isinstance(self.frequencies, nn.Parameter) else fixed).append(("B", self.frequencies))
        return trained, fixed

    @torch.no_grad()
    def initialise(self, seed: int, level: int, subdomain_ids: np.ndarray) -> None:
        """Weights and biases uniform in ±1/√fan_in (LeCun uniform, as torch.nn.Linear and the
        reference FBPINN implementation), Fourier frequencies B ~ N(0, σ²), all drawn from
        (seed, level, global subdomain id) only; slopes a = 1/n (n·a = 1: the plain activation).

        Non-zero biases matter here: they spread each subdomain's tanh units over its input
        interval, which the high-frequency solutions need from the first step."""
        ids = np.asarray(subdomain_ids, dtype=np.int64)
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            _, n_out, n_in = weight.shape
            bound = 1.0 / np.sqrt(n_in)
            draws = rng.uniform(rng.stream_key(seed, "init", level, layer), ids, n_out * (n_in + 1))
            draws = (2 * draws - 1) * bound
            weight.copy_(torch.from_numpy(draws[:, : n_out * n_in].reshape(-1, n_out, n_in)))
            bias.copy_(torch.from_numpy(draws[:, n_out * n_in :].reshape(-1, n_out, 1)))
        if self.fourier is not None:
            self.frequencies.copy_(torch.from_numpy(draw_frequencies(self.fourier, seed, level, ids, self.sizes[0])))
        for slope in self.slopes:
            slope.fill_(1.0 / self.adaptive.scale)

    def _dense_layers(self, rows: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
        """Weights and biases of the dense layers for ``rows``, with the slopes n·a folded in."""
        # Index the parameter lists rather than slicing them: a slice builds a new ParameterList,
        # which would bypass parameters swapped in by torch.func.functional_call.
        weights, biases = list(self.weights), list(self.biases)
        slopes = list(self.slopes)
        if rows is not None:
            weights = [w.index_select(0, rows) for w in weights]
            biases = [b.index_select(0, rows) for b in biases]
            slopes = [a.index_select(0, rows) for a in slopes]
        for k, a in enumerate(slopes):
            factor = a * self.adaptive.scale  # [S, 1 or H, 1]: n·a per unit of hidden layer k
            weights[k], biases[k] = weights[k] * factor, biases[k] * factor
        return weights, biases

    def jets(self, x_norm: Tensor, inv_half_width: Tensor, spec: JetSpec, rows: Tensor | None = None) -> Tensor:
        """Outputs and their input derivatives.

        ``x_norm``: [S, dim, P] normalised inputs; ``inv_half_width``: [S, dim] (dx_norm/dx);
        ``rows``: which of the stacked networks these S are (all, in order, if None).
        Returns [S, J, n_out, P], J = len(spec): row r is the derivative ``spec.indices[r]``
        with respect to the *physical* inputs.
        """
        weights, biases = self._dense_layers(rows)
        # The input layer: an affine map of x_norm and an element-wise function of it.
        if self.fourier is None:
            w_in, input_derivatives = weights.pop(0), self.activation.derivatives
            z = torch.baddbmm(biases.pop(0), w_in, x_norm)  # [S, H1, P]
        else:
            frequencies = self.frequencies if rows is None else self.frequencies.index_select(0, rows)
            w_in, input_derivatives = frequencies * (2 * math.pi), feature_derivatives
            z = torch.bmm(w_in, x_norm)  # θ: [S, m, P]
        if len(spec) == 1:
            h = input_derivatives(z, 0)[0]
            for k, (w, b) in enumerate(zip(weights, biases)):
                z = torch.baddbmm(b, w, h)
                if k < len(weights) - 1:
                    h = self.activation.derivatives(z, 0)[0]
            return z.unsqueeze(1)

        sigma = input_derivatives(z, spec.max_order)  # [S, U, P] each
        grad0 = (w_in * inv_half_width[:, None, :]).transpose(1, 2)  # [S, dim, U]: dz/dx_a per unit
        if self.fourier is not None:  # sin θ and cos θ units share dθ/dx_a
            grad0 = torch.cat([grad0, grad0], dim=2)
        w1, b1 = weights[0], biases[0]
        n_sub, n_next = w1.shape[0], w1.shape[1]
        blocks = [torch.baddbmm(b1, w1, sigma[0]).unsqueeze(1)]
        # Columns picked by Python int, not by a list: a list index is a tensor made from host data
        # at every call (on a GPU, a copy and a wait per step).
        dz_dx = grad0.unbind(1)  # dim x [S, U]
        for order in range(1, spec.max_order + 1):
            indices = spec.indices[spec.order_slice(order)]
            factors = torch.stack([dz_dx[idx[0]] for idx in indices], dim=1)  # [S, n_rows, U]: Π_{a∈idx} dz/dx_a
            for k in range(1, order):
                factors = factors * torch.stack([dz_dx[idx[k]] for idx in indices], dim=1)
            # Fold the per-unit factor into the next layer's weights: one bmm per derivative order.
            folded = (w1.unsqueeze(1) * factors.unsqueeze(2)).reshape(n_sub, len(indices) * n_next, -1)
            blocks.append(torch.bmm(folded, sigma[order]).view(n_sub, len(indices), n_next, -1))
        z = torch.cat(blocks, dim=1)  # [S, J, H, P]

        for w, b in zip(weights[1:], biases[1:]):
            h = spec.compose(self.activation.derivatives(z[:, 0], spec.max_order), z, axis=1)
            z = torch.matmul(w.unsqueeze(1), h)  # [S, J, H', P]
            z = torch.cat([z[:, :1] + b.unsqueeze(1), z[:, 1:]], dim=1)
        return z
