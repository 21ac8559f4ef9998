"""Building blocks for hard-constraint ansätze ``u = shift + scale · N``.

The networks learn ``N = (u − shift) / scale``, so ``scale`` should be ≈ 1 wherever the
solution lives: a scale that is small in the interior (``x(1 − x)`` peaks at 1/4, its 2-D product
at 1/16) makes the networks output a multiple of ``u``, far from the ``output_scale`` they are
normalised for, and training converges slowly or not at all.
"""

from __future__ import annotations

import torch

__all__ = ["box_bubble"]


def box_bubble(x: torch.Tensor, sharpness: float, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Π_a tanh((x_a − lo)/s) tanh((hi − x_a)/s): zero on the boundary of the box [lo, hi]^d and
    ≈ 1 farther than a few ``sharpness`` s from it (pick s below the solution's shortest length
    scale, e.g. 1/ω for sin(ωπx)). ``x``: [n, d]; returns [n]."""
    out = torch.ones_like(x[:, 0])
    for a in range(x.shape[1]):
        out = out * torch.tanh((x[:, a] - lo) / sharpness) * torch.tanh((hi - x[:, a]) / sharpness)
    return out
