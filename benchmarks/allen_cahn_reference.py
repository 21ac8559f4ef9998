"""Error estimate of the Allen–Cahn (P9) method-of-lines reference, by refinement.

    python benchmarks/allen_cahn_reference.py            # ~15 s on this CPU
    python benchmarks/allen_cahn_reference.py --grids 513 1025 2049 4097 8193 16385

Solves at every grid of ``--grids`` (nodes in x, each doubling the intervals of the one before;
the first solve time includes importing scipy) and compares the solutions at the coarsest grid's
nodes and the stored times (step 1e-3). Second-order convergence shows as ratios near 4 between
successive differences; the Richardson estimate of a grid's error is then (4/3)·|u_n − u_2n|. For
the default grid (``--default-grid``) it also measures the integrator's tolerance (1e-10 vs
1e-13) and the interpolation error: the spline through every other node (or stored time) of a
grid twice as fine, against the nodal values it skipped. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ddpinn.problems.reference import AllenCahnGrid, allen_cahn_grid, allen_cahn_mol

DIFFUSION, REACTION = 0.001, 5.0
N_T = 1001


def timed_solve(n_x: int, n_t: int = N_T, tolerance: float = 1e-10) -> tuple[AllenCahnGrid, float]:
    """The solution on ``n_x`` nodes and ``n_t`` times, and the seconds it took (0 if cached)."""
    start = time.perf_counter()
    grid = allen_cahn_grid(DIFFUSION, REACTION, n_x, n_t, tolerance)
    return grid, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[1025, 2049, 4097, 8193])
    p.add_argument(
        "--default-grid", type=int, default=2049, help="the grid whose tolerance and interpolation are measured"
    )
    args = p.parse_args()
    coarsest = args.grids[0]
    for a, b in zip(args.grids, args.grids[1:]):
        if b - 1 != 2 * (a - 1):
            p.error(f"--grids: {b} nodes do not halve the spacing of {a} (need {2 * a - 1})")

    # ------------------------------------------------------------------ refinement in x
    at_common_nodes, solve_seconds = {}, {}
    print(
        f"{'nodes':>6} {'solve s':>8} {'max|u_n - u_2n|':>16} {'ratio':>6} "
        f"{'Richardson: max err':>20} {'rel L2 err':>11}"
    )
    for n in args.grids:
        grid, solve_seconds[n] = timed_solve(n)
        at_common_nodes[n] = grid.u[:, :: (n - 1) // (coarsest - 1)]
        print(f"{n:>6} {solve_seconds[n]:>8.2f}")
    norm = np.linalg.norm(at_common_nodes[args.grids[-1]])
    previous = None
    for coarse, fine in zip(args.grids, args.grids[1:]):
        diff = np.abs(at_common_nodes[coarse] - at_common_nodes[fine])
        ratio = f"{previous / diff.max():6.2f}" if previous else " " * 6
        where = np.unravel_index(diff.argmax(), diff.shape)
        print(
            f"{coarse:>6} {'':>8} {diff.max():>16.2e} {ratio} {4 / 3 * diff.max():>20.2e} "
            f"{4 / 3 * np.linalg.norm(diff) / norm:>11.2e}   (largest at t = {where[0] / (N_T - 1):.3f}, "
            f"x = {-1 + 2 * where[1] / (coarsest - 1):+.3f})"
        )
        previous = diff.max()

    # ------------------------------------------------------------------ the default grid
    n = args.default_grid
    base, _ = timed_solve(n)
    tight, tight_seconds = timed_solve(n, tolerance=1e-13)
    print(
        f"\n{n} nodes, {N_T} times: tolerance 1e-10 vs 1e-13 (solve {tight_seconds:.2f} s): "
        f"max diff {np.abs(base.u - tight.u).max():.1e}"
    )
    fine, _ = timed_solve(2 * n - 1, 2 * N_T - 1)
    half = fine.every(2, 2)  # = n nodes, N_T times, as allen_cahn_mol stores them
    xx, tt = np.meshgrid(fine.x[1::2], half.t)
    between_nodes = np.abs(half.evaluate(xx, tt) - fine.u[::2, 1::2]).max()
    xx, tt = np.meshgrid(half.x, fine.t[1::2])
    between_times = np.abs(half.evaluate(xx, tt) - fine.u[1::2, ::2]).max()
    print(f"interpolation error: between nodes {between_nodes:.1e}, between stored times {between_times:.1e}")
    points = np.random.default_rng(0).uniform((-1.0, 0.0), (1.0, 1.0), (10_000, 2))
    for call in ("first", "second"):  # the first builds the spline of the (cached) default grid
        start = time.perf_counter()
        allen_cahn_mol(points[:, 0], points[:, 1], DIFFUSION, REACTION)
        print(f"allen_cahn_mol at 10,000 points, {call} call after the solve: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
