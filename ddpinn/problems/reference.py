"""Reference solutions without a closed form: a finite-difference Helmholtz solve (P5) and the
Hopf–Cole solution of viscous Burgers evaluated by Gauss–Hermite quadrature (P6)."""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["helmholtz_fd", "burgers_hopf_cole"]


@functools.lru_cache(maxsize=4)
def _helmholtz_grid(k: float, source_width: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    h = 1.0 / (n - 1)
    m = n - 2  # interior nodes per axis; u = 0 on the boundary nodes
    lap1 = sp.diags([np.ones(m - 1), -2 * np.ones(m), np.ones(m - 1)], [-1, 0, 1]) / h**2
    eye = sp.identity(m)
    a = (sp.kron(eye, lap1) + sp.kron(lap1, eye) + k**2 * sp.identity(m * m)).tocsc()
    g = np.linspace(0, 1, n)
    xi, yi = np.meshgrid(g[1:-1], g[1:-1], indexing="ij")
    f = np.exp(-((xi - 0.5) ** 2 + (yi - 0.5) ** 2) / (2 * source_width**2)) / (2 * math.pi * source_width**2)
    u = np.zeros((n, n))
    u[1:-1, 1:-1] = spsolve(a, f.reshape(-1)).reshape(m, m)
    return g, u


def helmholtz_fd(x: np.ndarray, k: float, source_width: float, n: int = 320) -> np.ndarray:
    """u at points ``x`` ([n_points, 2] in [0,1]²) of Δu + k²u = f, u = 0 on ∂[0,1]², where f is a
    unit Gaussian of width ``source_width`` at (½, ½): 5-point stencil on an ``n``×``n`` grid,
    sparse direct solve, bicubic interpolation. [n_points]."""
    from scipy.interpolate import RectBivariateSpline

    g, u = _helmholtz_grid(float(k), float(source_width), int(n))
    return RectBivariateSpline(g, g, u, kx=3, ky=3)(x[:, 0], x[:, 1], grid=False)


def burgers_hopf_cole(x: np.ndarray, t: np.ndarray, nu: float, n_nodes: int = 200) -> np.ndarray:
    """Exact u(x, t) of u_t + u u_x = ν u_xx, u(x,0) = -sin(πx), u(±1,t) = 0 on x ∈ [-1,1].

    Hopf–Cole: u = -∫ sin(π(x-η)) F(x-η) e^{-η²/4νt} dη / ∫ F(x-η) e^{-η²/4νt} dη with
    F(y) = exp(-cos(πy)/(2πν)), by ``n_nodes``-point Gauss–Hermite quadrature in η = √(4νt) z;
    F is handled in log space since its exponent reaches 1/(2πν) (50 for ν = 0.01/π).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    z, w = np.polynomial.hermite.hermgauss(n_nodes)
    y = x[:, None] - np.sqrt(4 * nu * t)[:, None] * z[None, :]
    log_f = -np.cos(math.pi * y) / (2 * math.pi * nu)
    weights = w[None, :] * np.exp(log_f - log_f.max(axis=1, keepdims=True))
    return -(weights * np.sin(math.pi * y)).sum(axis=1) / weights.sum(axis=1)
