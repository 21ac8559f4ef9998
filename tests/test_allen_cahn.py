"""P9 Allen–Cahn (ddpinn.problems.library.allen_cahn) and its method-of-lines reference
(ddpinn.problems.reference.allen_cahn_grid / allen_cahn_mol): the reference meets the initial and
boundary conditions between its nodes, solves the problem's own residual on its grid, converges at
second order under refinement, and its interpolation adds far less error than its grid; bad
parameters are refused naming the field; the shipped configs pass ``ddpinn check``.

Grids here are cheap (257–1,025 nodes, about 1 s of solves in all); the figures at the default
2,049 nodes come from ``python benchmarks/allen_cahn_reference.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpinn.cli import main
from ddpinn.config import load_config
from ddpinn.problems import Derivatives, ProblemError, make_problem, registered
from ddpinn.problems.reference import allen_cahn_grid

F64 = torch.float64
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_is_registered_with_a_time_axis_named_t():
    assert "allen_cahn" in registered()
    problem = make_problem("allen_cahn")
    assert problem.inputs == ("x", "t")  # causal weighting looks for the input named "t"
    assert (problem.diffusion, problem.reaction) == (0.001, 5.0)


def test_reference_meets_the_initial_and_boundary_conditions_between_its_nodes():
    problem = make_problem("allen_cahn")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, generator=g, dtype=F64) * 2 - 1
    t = torch.rand(500, generator=g, dtype=F64)
    initial = problem.exact(torch.stack([x, torch.zeros_like(x)], 1))[:, 0]
    torch.testing.assert_close(initial, x**2 * torch.cos(math.pi * x), rtol=0, atol=1e-12)
    for side in (-1.0, 1.0):
        boundary = problem.exact(torch.stack([torch.full_like(t, side), t], 1))[:, 0]
        torch.testing.assert_close(boundary, torch.full_like(t, -1.0), rtol=0, atol=1e-12)
    # The problem is even in x, and u stays in [-1, 1] (maximum principle: u(x,0) and the
    # boundary values lie there and R(u - u³) points back into it).
    inside = torch.stack([x, t], 1)
    mirrored = torch.stack([-x, t], 1)
    torch.testing.assert_close(problem.exact(inside), problem.exact(mirrored), rtol=0, atol=1e-12)
    assert problem.exact(inside).abs().max() <= 1


def test_reference_solves_the_problems_own_residual_on_its_grid():
    """At the interior nodes of a 257-node grid, with u_xx by the 3-point stencil the solver uses
    and u_t by 4th-order central differences over the stored times (step 1e-3), ``problem.residual``
    vanishes up to integrator and time-differencing error: measured 1.9e-7 against terms of size
    3.9, so the solver and the residual agree on the equation, its coefficients and their signs."""
    problem = make_problem("allen_cahn")
    grid = allen_cahn_grid(problem.diffusion, problem.reaction, 257, 1001)
    u = torch.from_numpy(grid.u)
    dt, h = grid.t[1] - grid.t[0], grid.x[1] - grid.x[0]
    centre = u[2:-2, 1:-1]
    u_t = (-u[4:, 1:-1] + 8 * u[3:-1, 1:-1] - 8 * u[1:-3, 1:-1] + u[:-4, 1:-1]) / (12 * dt)
    u_xx = (u[2:-2, 2:] - 2 * centre + u[2:-2, :-2]) / h**2
    spec = problem.jet_spec()
    names = problem.derivative_names(spec)
    jets = torch.zeros(centre.numel(), len(spec), 1, dtype=F64)
    for name, value in (("u", centre), ("u_t", u_t), ("u_xx", u_xx)):
        jets[:, names[name][0], 0] = value.reshape(-1)
    xt = torch.from_numpy(np.stack(np.meshgrid(grid.x[1:-1], grid.t[2:-2]), -1).reshape(-1, 2))
    residual = problem.residual(xt, Derivatives(jets, names))
    terms = u_t.abs() + problem.diffusion * u_xx.abs() + problem.reaction * (centre - centre**3).abs()
    assert residual.abs().max() < 1e-5 * terms.max()


def test_reference_converges_at_second_order():
    """Successive differences at the 257-node grid's nodes shrink 4x per halving of h (measured
    4.13 between 257/513 and 513/1,025); the Richardson estimate of the 513-node error,
    (4/3)·|u_513 − u_1025|, is 1.4e-3, so the default 2,049 nodes are 16x better (9e-5)."""
    u = {n: allen_cahn_grid(0.001, 5.0, n, 1001).u[:, :: (n - 1) // 256] for n in (257, 513, 1025)}
    coarse, fine = np.abs(u[257] - u[513]).max(), np.abs(u[513] - u[1025]).max()
    assert 3.8 < coarse / fine < 4.4
    assert 4 / 3 * fine < 2e-3


def test_interpolation_adds_far_less_error_than_the_grid():
    """The bicubic spline through every other node and stored time of the 1,025 x 1,001 solution
    (513 nodes, time step 2e-3), against the nodal values it skipped: 1.0e-5 between nodes and
    4e-8 between times, against a 513-node discretisation error of 1.4e-3 (at the default grid:
    4e-8 and 1e-7 against 9e-5)."""
    fine = allen_cahn_grid(0.001, 5.0, 1025, 1001)
    half = fine.every(2, 2)
    x, t = np.meshgrid(fine.x[1::2], half.t)
    assert np.abs(half.evaluate(x, t) - fine.u[::2, 1::2]).max() < 3e-5
    x, t = np.meshgrid(half.x, fine.t[1::2])
    assert np.abs(half.evaluate(x, t) - fine.u[1::2, ::2]).max() < 1e-6


@pytest.mark.parametrize(
    "field, value",
    [
        ("diffusion", 0.0),
        ("diffusion", -1e-3),
        ("diffusion", math.inf),
        ("reaction", math.nan),
        ("reaction", -math.inf),
        ("reference_grid", 128),
        ("output_scale", 0.0),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(field, value):
    with pytest.raises(ProblemError, match=f"problem.params.{field}:"):
        make_problem("allen_cahn", {field: value})


def test_shipped_configs_pass_check_and_the_quick_one_keeps_the_layout(capsys):
    full, quick = (CONFIGS / "allen_cahn.yaml", CONFIGS / "allen_cahn_quick.yaml")
    for path in (full, quick):
        assert main(["check", str(path)]) == 0, capsys.readouterr().err
    a, b = load_config(full), load_config(quick)
    assert (a.problem, a.decomposition, a.network) == (b.problem, b.decomposition, b.network)
    assert (a.sampling.method, a.sampling.n) == (b.sampling.method, b.sampling.n)
