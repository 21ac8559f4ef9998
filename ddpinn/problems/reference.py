"""Reference solutions without a closed form: a finite-difference Helmholtz solve (P5), the
Hopf–Cole solution of viscous Burgers evaluated by Gauss–Hermite quadrature (P6) and a
method-of-lines Allen–Cahn solve (P9; estimated error 9e-5 max, 6e-6 relative L2, by grid
refinement: see :func:`allen_cahn_mol`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AllenCahnGrid",
    "allen_cahn_grid",
    "allen_cahn_initial",
    "allen_cahn_mol",
    "burgers_hopf_cole",
    "helmholtz_fd",
]


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



def allen_cahn_initial(x: np.ndarray) -> np.ndarray:
    """u(x, 0) = x² cos(πx) of the Allen–Cahn problem (P9), elementwise; equals -1 at x = ±1."""
    return x**2 * np.cos(math.pi * x)


@dataclass(frozen=True, eq=False)
class AllenCahnGrid:
    """Nodal values of a method-of-lines Allen–Cahn solution: ``u[i, j]`` = u(``x[j]``, ``t[i]``);
    ``x``: [n_x] uniform nodes of [-1, 1], ``t``: [n_t] uniform times of [0, 1]."""

    x: np.ndarray
    t: np.ndarray
    u: np.ndarray

    def every(self, x_step: int, t_step: int) -> AllenCahnGrid:
        """The sub-grid of every ``x_step``-th node and ``t_step``-th time (to measure interpolation
        error against the skipped nodal values)."""
        return AllenCahnGrid(self.x[::x_step], self.t[::t_step], self.u[::t_step, ::x_step])

    @functools.cached_property
    def _change_spline(self):
        from scipy.interpolate import RectBivariateSpline

        # Interpolating the change from u(x, 0) keeps the result equal to the initial condition at
        # t = 0 and to -1 at x = ±1 to round-off, wherever x lies between the nodes.
        return RectBivariateSpline(self.t, self.x, self.u - allen_cahn_initial(self.x), kx=3, ky=3)

    def evaluate(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """u at points (``x``, ``t``) (arrays of one shape) by bicubic interpolation."""
        x, t = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64))
        return allen_cahn_initial(x) + self._change_spline(t, x, grid=False)


def allen_cahn_grid(
    diffusion: float, reaction: float, n_x: int = 2049, n_t: int = 1001, tolerance: float = 1e-10
) -> AllenCahnGrid:
    """u_t = D u_xx + R (u - u³) on x ∈ [-1, 1], t ∈ [0, 1], u(x, 0) = x² cos(πx), u(±1, t) = -1,
    by the method of lines: second-order central differences on ``n_x`` uniform nodes, integrated
    by scipy's BDF (rtol = atol = ``tolerance``, tridiagonal Jacobian given), stored at ``n_t``
    uniform times. Cached: one solve per set of values, however they are passed."""
    return _allen_cahn_solve(float(diffusion), float(reaction), int(n_x), int(n_t), float(tolerance))


@functools.lru_cache(maxsize=4)
def _allen_cahn_solve(diffusion: float, reaction: float, n_x: int, n_t: int, tolerance: float) -> AllenCahnGrid:
    import scipy.sparse as sp
    from scipy.integrate import solve_ivp

    x = np.linspace(-1.0, 1.0, n_x)
    h = x[1] - x[0]
    m = n_x - 2  # interior nodes; u = -1 on the two boundary nodes
    lap = sp.diags([np.ones(m - 1), -2 * np.ones(m), np.ones(m - 1)], [-1, 0, 1], format="csc") / h**2
    boundary = np.zeros(m)  # the Dirichlet values' contribution to the interior Laplacian
    boundary[[0, -1]] = -1.0 / h**2
    diffusion_matrix = diffusion * lap

    def rhs(t, u):
        return diffusion * (lap @ u + boundary) + reaction * (u - u**3)

    def jacobian(t, u):  # tridiagonal: without it BDF would difference n_x columns per Jacobian
        return (diffusion_matrix + sp.diags(reaction * (1 - 3 * u**2))).tocsc()

    t = np.linspace(0.0, 1.0, n_t)
    sol = solve_ivp(
        rhs, (0.0, 1.0), allen_cahn_initial(x[1:-1]), method="BDF", t_eval=t, rtol=tolerance, atol=tolerance,
        jac=jacobian,
    )
    if sol.status != 0:
        raise RuntimeError(f"allen_cahn_grid: the stiff integrator failed: {sol.message}")
    u = np.full((n_t, n_x), -1.0)
    u[:, 1:-1] = sol.y.T
    return AllenCahnGrid(x, t, u)


def allen_cahn_mol(
    x: np.ndarray,
    t: np.ndarray,
    diffusion: float,
    reaction: float,
    n_x: int = 2049,
    n_t: int = 1001,
    tolerance: float = 1e-10,
) -> np.ndarray:
    """u(x, t) of the Allen–Cahn problem (P9) at points ``x``, ``t`` (arrays of one shape, e.g.
    [n_points]): the cached :func:`allen_cahn_grid` solution, interpolated bicubically.

    Error at the defaults (D = 0.001, R = 5; the interfaces are ~√(2D/R) = 0.02 wide, 20 nodes):
    the spatial discretisation dominates, converging at second order (successive differences at
    1,025/2,049/4,097/8,193 nodes shrink 4.0x), so by Richardson the 2,049-node solution is off by
    ≤ 9e-5 anywhere (largest at t = 1 in the interfaces) and 6e-6 in relative L2 over the domain.
    The integrator (tolerance 1e-10 vs 1e-13: 2e-9) and the interpolation (x: 4e-8; t, step 1e-3:
    1e-7) add less. ``python benchmarks/allen_cahn_reference.py`` measures these figures and
    ``tests/test_allen_cahn.py`` checks them at cheaper resolutions. The first call with given
    arguments takes about 1 s on this CPU (solve 0.3 s, spline 0.2 s, scipy imports); later calls
    reuse both (10,000 points: 15 ms).
    """
    return allen_cahn_grid(diffusion, reaction, n_x, n_t, tolerance).evaluate(x, t)
