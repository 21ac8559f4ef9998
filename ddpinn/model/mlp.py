"""All subdomain networks of one level as one batched computation.

Defines :class:`StackedMLP`: fully connected networks with parameters stacked on a leading
subdomain axis, evaluated with forward-mode input-derivative jets. Used by
:class:`ddpinn.model.fbpinn.FBPINN`.

Layout is feature-major, ``[subdomain, feature, point]``: on CPU, batched matrix products with
the long point axis last are an order of magnitude faster than point-major ones for these small
widths, and the point axis stays contiguous for the element-wise activation work.

Jets: the first layer is affine in x, so its pre-activation derivatives ``dz/dx_a = W[:, a] · 2/width_a``
are constants per subdomain and its second derivatives vanish. The first hidden layer's jet rows
are therefore ``σ^(m)(z) · Π_{a∈α} dz/dx_a``, and the next layer's product with them folds that
per-unit constant into its weights, so no ``[S, J, H, P]`` tensor is formed for the first layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ddpinn import rng
from ddpinn.jets import JetSpec
from ddpinn.model.activations import Activation

__all__ = ["StackedMLP"]


class StackedMLP(nn.Module):
    """``n_subdomains`` MLPs of layer sizes ``sizes`` (``[in, hidden..., out]``), stacked.

    ``weights[k]``: [n_subdomains, sizes[k+1], sizes[k]]; ``biases[k]``: [n_subdomains, sizes[k+1], 1].
    """

    def __init__(self, n_subdomains: int, sizes: Sequence[int], activation: Activation, dtype: torch.dtype) -> None:
        super().__init__()
        if len(sizes) < 3:
            raise ValueError(f"network.hidden: need at least one hidden layer, got sizes {list(sizes)}")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation = activation
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(n_subdomains, n_out, n_in, dtype=dtype))
            for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(n_subdomains, n_out, 1, dtype=dtype)) for n_out in self.sizes[1:]
        )

    @property
    def n_subdomains(self) -> int:
        return self.weights[0].shape[0]

    @torch.no_grad()
    def initialise(self, seed: int, level: int, subdomain_ids: np.ndarray) -> None:
        """Weights and biases uniform in ±1/√fan_in (LeCun uniform, as torch.nn.Linear and the
        reference FBPINN implementation), drawn from (seed, level, global subdomain id) only.

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

    def jets(self, x_norm: Tensor, inv_half_width: Tensor, spec: JetSpec, rows: Tensor | None = None) -> Tensor:
        """Outputs and their input derivatives.

        ``x_norm``: [S, dim, P] normalised inputs; ``inv_half_width``: [S, dim] (dx_norm/dx);
        ``rows``: which of the stacked networks these S are (all, in order, if None).
        Returns [S, J, n_out, P], J = len(spec): row r is the derivative ``spec.indices[r]``
        with respect to the *physical* inputs.
        """
        # Index the parameter lists rather than slicing them: a slice builds a new ParameterList,
        # which would bypass parameters swapped in by torch.func.functional_call.
        weights, biases = list(self.weights), list(self.biases)
        if rows is not None:
            weights = [w.index_select(0, rows) for w in weights]
            biases = [b.index_select(0, rows) for b in biases]
        w0, b0 = weights[0], biases[0]
        z = torch.baddbmm(b0, w0, x_norm)  # [S, H1, P]
        if len(spec) == 1:
            for w, b in zip(weights[1:], biases[1:]):
                z = torch.baddbmm(b, w, self.activation.derivatives(z, 0)[0])
            return z.unsqueeze(1)

        sigma = self.activation.derivatives(z, spec.max_order)  # [S, H1, P] each
        grad0 = (w0 * inv_half_width[:, None, :]).transpose(1, 2)  # [S, dim, H1]: dz/dx_a per unit
        w1, b1 = weights[1], biases[1]
        n_sub, n_next = w1.shape[0], w1.shape[1]
        blocks = [torch.baddbmm(b1, w1, sigma[0]).unsqueeze(1)]
        # Columns picked by Python int, not by a list: a list index is a tensor made from host data
        # at every call (on a GPU, a copy and a wait per step).
        dz_dx = grad0.unbind(1)  # dim x [S, H1]
        for order in range(1, spec.max_order + 1):
            indices = spec.indices[spec.order_slice(order)]
            factors = torch.stack([dz_dx[idx[0]] for idx in indices], dim=1)  # [S, n_rows, H1]: Π_{a∈idx} dz/dx_a
            for k in range(1, order):
                factors = factors * torch.stack([dz_dx[idx[k]] for idx in indices], dim=1)
            # Fold the per-unit factor into the next layer's weights: one bmm per derivative order.
            folded = (w1.unsqueeze(1) * factors.unsqueeze(2)).reshape(n_sub, len(indices) * n_next, -1)
            blocks.append(torch.bmm(folded, sigma[order]).view(n_sub, len(indices), n_next, -1))
        z = torch.cat(blocks, dim=1)  # [S, J, H2, P]

        for w, b in zip(weights[2:], biases[2:]):
            h = spec.compose(self.activation.derivatives(z[:, 0], spec.max_order), z, axis=1)
            z = torch.matmul(w.unsqueeze(1), h)  # [S, J, H', P]
            z = torch.cat([z[:, :1] + b.unsqueeze(1), z[:, 1:]], dim=1)
        return z

