"""The problem library (ddpinn.problems): every registered problem's exact solution satisfies its
residual, hard constraints and soft constraints; the numerical references (P5 finite
differences, P6 Hopf–Cole quadrature) converge.

Residual tolerances are relative to the size of the residual's own terms, measured generically
as Σ_k |∂r/∂d_k · d_k| + |r(x, d = 0)| (for a linear residual: the sum of its terms' magnitudes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.jets import D, JetSpec, pointwise_jets
from ddpinn.problems import Derivatives, Face, Point, Points, ProblemError, make_problem, registered
from ddpinn.problems.base import as_columns
from ddpinn.problems.reference import burgers_hopf_cole, helmholtz_fd

F64 = torch.float64
NAMES = registered()


def test_the_library_registers_p1_to_p9():
    assert NAMES == [
        "allen_cahn", "burgers", "cos1d", "darcy_inverse", "discovery", "harmonic", "harmonic_inverse", "heat2d_ms", "helmholtz2d",
        "multiscale_cos1d", "poisson2d", "wave1d",
    ]

# Equation discovery fits noisy observations with an unknown equation: it has no ansatz, and its
# data constraint holds only to the noise (its own tests: tests/test_discovery.py).
DATA_DRIVEN = {"discovery"}


def with_true_parameters(problem):
    """An inverse problem's exact solution belongs to its true parameters, not the initial guess."""
    for name, value in problem.true_parameters().items():
        setattr(problem, name, value)
    return problem


def test_inverse_problems_declare_the_truth_of_every_trainable():
    for name in NAMES:
        problem = make_problem(name)
        assert set(problem.true_parameters()) == set(problem.trainable)


def box_points(problem, n: int, seed: int = 0, fixed: dict[str, float] | None = None) -> torch.Tensor:
    """Uniform random points of the problem's domain, with some coordinates fixed: [n, dim] float64."""
    box = problem.domain()
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(box.lo, dtype=F64), torch.tensor(box.hi, dtype=F64)
    x = lo + (hi - lo) * torch.rand(n, problem.dim, generator=g, dtype=F64)
    for name, value in (fixed or {}).items():
        x[:, problem.inputs.index(name)] = value
    return x


def term_scale(problem, x: torch.Tensor, jets: torch.Tensor, residual) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(r, scale)] per residual component: r at the jets, and Σ_k |∂r/∂d_k d_k| + |r(x, 0)|."""
    names = problem.derivative_names(problem.jet_spec())
    jets = jets.detach().clone().requires_grad_(True)
    out = residual(x, Derivatives(jets, names))
    zero = residual(x, Derivatives(torch.zeros_like(jets), names))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    zeros = zero if isinstance(zero, (tuple, list)) else (zero,)
    result = []
    for r, r0 in zip(outs, zeros):
        r = r + 0 * jets.sum()  # a constant residual still gets a gradient
        (grad,) = torch.autograd.grad(r.sum(), jets, retain_graph=True)
        scale = (grad * jets).abs().sum(dim=(1, 2)) + torch.as_tensor(r0).abs()
        result.append((r.detach(), scale.detach()))
    return result


def assert_small(pairs, rtol: float, floor: float = 0.0) -> None:
    """|r| <= rtol · scale, with the scale floored at 1e-3 of its maximum (points where every term
    vanishes at once) and at ``floor`` (constraints such as u' = 0, whose only term is ~0)."""
    for r, scale in pairs:
        floor = max(floor, 1e-3 * scale.max().item())
        worst = (r.abs() / scale.clamp_min(floor)).max().item()
        assert worst <= rtol, f"relative residual {worst:.2e} > {rtol:.0e}"


def fd_jets(fn, x: torch.Tensor, spec: JetSpec, h: float) -> torch.Tensor:
    """Central-difference jets (orders <= 2 per axis, <= 2 in total) of ``fn``: [n, J, n_out]."""
    e = torch.eye(x.shape[1], dtype=F64) * h
    rows = []
    for idx in spec.indices:
        if len(idx) == 0:
            rows.append(fn(x))
        elif len(idx) == 1:
            (a,) = idx
            rows.append((fn(x + e[a]) - fn(x - e[a])) / (2 * h))
        elif len(idx) == 2 and idx[0] == idx[1]:
            a = idx[0]
            rows.append((fn(x + e[a]) - 2 * fn(x) + fn(x - e[a])) / h**2)
        elif len(idx) == 2:
            a, b = idx
            rows.append((fn(x + e[a] + e[b]) - fn(x + e[a] - e[b]) - fn(x - e[a] + e[b]) + fn(x - e[a] - e[b])) / (4 * h * h))
        else:
            raise NotImplementedError(idx)
    return torch.stack(rows, dim=1)


def exact_is_differentiable(problem) -> bool:
    x = box_points(problem, 2).requires_grad_(True)
    return problem.exact(x).requires_grad


# Problems whose reference solution is numerical (NumPy), so not differentiable by autograd; each
# is checked by its own test below. A new problem lands in the generic test unless listed here.
NUMERICAL_REFERENCE = {"allen_cahn", "burgers", "helmholtz2d", "discovery"}  # discovery: burgers' by default


@pytest.mark.parametrize("name", NAMES)
def test_only_the_numerical_references_are_not_differentiable(name):
    assert exact_is_differentiable(make_problem(name)) == (name not in NUMERICAL_REFERENCE)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NUMERICAL_REFERENCE])
def test_exact_solution_satisfies_the_residual(name):
    problem = with_true_parameters(make_problem(name))
    spec = problem.jet_spec()
    x = box_points(problem, 200, seed=1)
    jets = pointwise_jets(problem.exact, x, spec)
    assert_small(term_scale(problem, x, jets, problem.residual), rtol=1e-12)


def test_burgers_reference_satisfies_the_residual_away_from_the_shock():
    """Hopf–Cole by quadrature, derivatives by central differences (h = 1e-4, float64).

    Away from the shock at x = 0 (|x| > 0.1) and the initial time (t >= 0.05) the solution is
    smooth on the scale h, so the O(h²) differencing error is ~1e-8·|u'''| ≲ 1e-6 of the terms
    (measured: 5e-7); near the shock the layer width ν/|u| ≈ 5e-3 makes differencing useless.
    """
    problem = make_problem("burgers")
    x = box_points(problem, 400, seed=2)
    x[:, 1] = x[:, 1].clamp(0.05, 0.99)
    x = x[(x[:, 0].abs() > 0.1) & (x[:, 0].abs() < 0.99)]
    jets = fd_jets(problem.exact, x, problem.jet_spec(), h=1e-4)
    assert_small(term_scale(problem, x, jets, problem.residual), rtol=1e-5)


def test_burgers_quadrature_has_converged_with_the_default_nodes():
    """Everywhere, shock included: 100 and 340 Gauss–Hermite nodes agree to round-off, and the
    default (200) is between them; 50 nodes are visibly worse."""
    problem = make_problem("burgers")
    rng = np.random.default_rng(3)
    x, t = rng.uniform(-1, 1, 2000), rng.uniform(0, 1, 2000)
    x[:20] = np.linspace(-0.02, 0.02, 20)  # across the shock at t = 1
    t[:20] = 1.0
    fine = burgers_hopf_cole(x, t, problem.nu, 340)
    default = burgers_hopf_cole(x, t, problem.nu, problem.quadrature_nodes)
    assert np.abs(burgers_hopf_cole(x, t, problem.nu, 100) - fine).max() < 1e-12
    assert np.abs(default - fine).max() < 1e-12
    assert np.abs(burgers_hopf_cole(x, t, problem.nu, 50) - fine).max() > 1e-8
    # the solution is odd in x and bounded by the initial data
    np.testing.assert_allclose(burgers_hopf_cole(-x, t, problem.nu), -default, atol=1e-14)
    assert np.abs(default).max() <= 1 + 1e-12


@pytest.mark.parametrize("nodes", [0, 400])
def test_burgers_rejects_quadrature_nodes_that_give_no_reference(nodes):
    try:
        problem = make_problem("burgers", {"quadrature_nodes": nodes})
    except ProblemError as err:
        assert "quadrature_nodes" in str(err)
        return
    u = problem.exact(torch.tensor([[0.3, 0.5]], dtype=F64))
    assert torch.isfinite(u).all()


def test_helmholtz_reference_solves_the_problems_own_residual():
    """At the reference grid's interior nodes, the 5-point Laplacian of ``exact`` (a spline through
    the nodal values) put through ``problem.residual`` vanishes to solver precision: the reference
    and the residual use the same sign of k², the same source and the same normalisation."""
    problem = make_problem("helmholtz2d", {"reference_grid": 64})
    n = problem.reference_grid
    g = np.linspace(0.0, 1.0, n)
    nodes = torch.from_numpy(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2))
    u = problem.exact(nodes).reshape(n, n)
    h = 1.0 / (n - 1)
    spec = problem.jet_spec()
    x = nodes.reshape(n, n, 2)[1:-1, 1:-1].reshape(-1, 2)
    jets = torch.zeros(x.shape[0], len(spec), 1, dtype=F64)
    jets[:, 0, 0] = u[1:-1, 1:-1].reshape(-1)
    jets[:, spec.row((0, 0)), 0] = ((u[2:, 1:-1] - 2 * u[1:-1, 1:-1] + u[:-2, 1:-1]) / h**2).reshape(-1)
    jets[:, spec.row((1, 1)), 0] = ((u[1:-1, 2:] - 2 * u[1:-1, 1:-1] + u[1:-1, :-2]) / h**2).reshape(-1)
    assert_small(term_scale(problem, x, jets, problem.residual), rtol=1e-10)


def test_helmholtz_reference_converges_at_second_order():
    """Successive differences of the FD solution at common nodes shrink ~4x per halving of h.

    ω = 5π, s_f = 0.1 (the L=3 row of the weak-scaling family) keeps the solves cheap (< 1 s);
    measured ratio 4.3 between the 81/161 and 161/321 differences (41 nodes is pre-asymptotic:
    5.7). The Richardson estimate of the 321-node solution's error, |u_321 − u_161|/3, is 0.6%
    of max|u|.
    """
    k, width = 5 * math.pi, 0.1
    g = np.linspace(0, 1, 21)
    x = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # nodes of every grid below
    u = {n: helmholtz_fd(x, k, width, n) for n in (81, 161, 321)}
    coarse, fine = np.abs(u[81] - u[161]).max(), np.abs(u[161] - u[321]).max()
    assert 3.6 < coarse / fine < 4.6
    assert fine / 3 < 0.01 * np.abs(u[321]).max()


# ----------------------------------------------------------------------------- hard constraints
# Where each shipped ansatz pins the solution: (fixed coordinates, jet rows that must be exact).
HARD = {
    "cos1d": [({"x": 0.0}, ["u"])],
    "multiscale_cos1d": [({"x": 0.0}, ["u"])],
    "harmonic": [({"t": 0.0}, ["u", "u_t"])],
    "harmonic_inverse": [({"t": 0.0}, ["u", "u_t"])],
    "poisson2d": [({"x": 0.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"y": 0.0}, ["u"]), ({"y": 1.0}, ["u"])],
    "darcy_inverse": [({"x": 0.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"y": 0.0}, ["u"]), ({"y": 1.0}, ["u"])],  # u and k
    "helmholtz2d": [({"x": 0.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"y": 0.0}, ["u"]), ({"y": 1.0}, ["u"])],
    "burgers": [({"x": -1.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"t": 0.0}, ["u"])],
    "allen_cahn": [({"x": -1.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"t": 0.0}, ["u"])],
    "wave1d": [({"x": 0.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"t": 0.0}, ["u", "u_t"])],
    "heat2d_ms": [
        ({"x": 0.0}, ["u"]), ({"x": 1.0}, ["u"]), ({"y": 0.0}, ["u"]), ({"y": 1.0}, ["u"]), ({"t": 0.0}, ["u"]),
    ],
}


def _row_index(problem, name: str) -> tuple[int, ...]:
    field, _, axes = name.partition("_")
    return D(field, *axes).multi_index(problem.inputs)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in DATA_DRIVEN])
def test_hard_constraint_reproduces_the_exact_solution_where_it_pins_it(name):
    assert name in HARD, f"add {name!r} to HARD: where does its ansatz pin the solution?"
    problem = make_problem(name, {"reference_grid": 96} if name == "helmholtz2d" else {})
    n_out = len(problem.outputs)
    for seed in (0, 1):  # whatever the network output N
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(problem.dim, n_out, generator=g, dtype=F64), torch.randn(n_out, generator=g, dtype=F64)

        def ansatz(x):
            hc = problem.hard_constraint(x)
            net = torch.sin(x @ a + b) * 3
            return as_columns(hc.shift, x, n_out) + as_columns(hc.scale, x, n_out) * net

        for fixed, rows in HARD[name]:
            x = box_points(problem, 40, seed=seed + 10, fixed=fixed)
            spec = JetSpec.closure(problem.dim, [_row_index(problem, r) for r in rows])
            got = pointwise_jets(ansatz, x, spec)
            if rows == ["u"]:
                want = problem.exact(x).reshape(-1, 1, n_out)
            else:
                want = pointwise_jets(problem.exact, x, spec)
            for r in rows:
                row = spec.row(_row_index(problem, r))
                torch.testing.assert_close(got[:, row], want[:, row], rtol=1e-12, atol=1e-12, msg=f"{fixed} {r}")
    # ... and leaves the interior free: the scale factor does not vanish there
    x = box_points(problem, 100, seed=5)
    lo, hi = torch.tensor(problem.domain().lo, dtype=F64), torch.tensor(problem.domain().hi, dtype=F64)
    interior = ((x - lo) > 1e-2 * (hi - lo)).all(1) & ((hi - x) > 1e-2 * (hi - lo)).all(1)
    assert (as_columns(problem.hard_constraint(x).scale, x, n_out)[interior].abs() > 1e-6).all()


# ----------------------------------------------------------------------------- soft constraints
VARIANTS = [(name, {}) for name in NAMES] + [("harmonic", {"constraint": "soft"})]
# Field inversion's data constraint, too, holds only to the noise (tests/test_field_inverse.py).
WITH_SOFT = [v for v in VARIANTS if make_problem(*v).constraints() and not make_problem(*v).trainable
             and v[0] not in DATA_DRIVEN | {"darcy_inverse"}]


def test_some_problem_has_soft_constraints():
    assert ("harmonic", {"constraint": "soft"}) in WITH_SOFT


@pytest.mark.parametrize("name, params", WITH_SOFT, ids=[f"{n}-{p}" for n, p in WITH_SOFT])
def test_exact_solution_satisfies_the_soft_constraints(name, params):
    problem = make_problem(name, params)
    assert problem.hard_constraint(box_points(problem, 3)) is None
    spec = problem.jet_spec()
    for c in problem.constraints():
        where = c.where
        if isinstance(where, Point):
            x = torch.tensor([where.coords], dtype=F64)
        elif isinstance(where, Face):
            box = problem.domain()
            a = problem.inputs.index(where.axis)
            x = box_points(problem, 30, fixed={where.axis: box.lo[a] if where.side == "lo" else box.hi[a]})
        else:
            assert isinstance(where, Points)
            x = where.x.to(F64)
        jets = pointwise_jets(problem.exact, x, spec)
        # e.g. u'(0) = 0: its one term is ~1e-16 itself; measure it against the solution's jets
        assert_small(term_scale(problem, x, jets, c.residual), rtol=1e-12, floor=jets.abs().max().item())


def test_inverse_observations_are_the_exact_solution_plus_the_stated_noise():
    problem = make_problem("harmonic_inverse", {"n_observations": 400, "noise": 0.05})
    (data,) = problem.constraints()
    t, observed = data.where.x, data.where.values
    assert t.shape == (400, 1) and bool(((t > 0) & (t <= 1)).all())
    noise = observed - problem.exact(t)
    assert abs(noise.std().item() - 0.05) < 0.05 * 0.15  # 400 samples: ~3.5% standard error
    assert abs(noise.mean().item()) < 4 * 0.05 / 20
    noiseless = make_problem("harmonic_inverse", {"noise": 0.0}).constraints()[0]
    residual = noiseless.residual(noiseless.where.x, Derivatives(problem.exact(noiseless.where.x)[:, None, :].expand(
        -1, len(problem.jet_spec()), -1), problem.derivative_names(problem.jet_spec()), noiseless.where.values))
    assert residual.abs().max().item() < 1e-15


# ----------------------------------------------------------------------------- declarations
@pytest.mark.parametrize("name, params", VARIANTS, ids=[f"{n}-{p}" for n, p in VARIANTS])
def test_declaration_is_consistent(name, params, tmp_path):
    problem = make_problem(name, params)
    problem.check()
    spec = problem.jet_spec()
    names = problem.derivative_names(spec)
    for dv in problem.all_derivatives():
        assert dv.name in names
    assert problem.domain().dim == problem.dim
    assert isinstance(problem.output_scale, float) and problem.output_scale > 0
    # the exact solution has one column per output, in the dtype it was given
    x = box_points(problem, 5).float()
    u = problem.exact(x)
    assert u.shape == (5, len(problem.outputs)) and u.dtype == torch.float32 and torch.isfinite(u).all()
    # and a run of it builds with that output scale
    exp = build_experiment(load_config(data={"problem": {"name": name, "params": params}, "decomposition": {"levels": 2},
                                             "run": {"output_dir": str(tmp_path)}}))
    assert exp.output_scale == (problem.output_scale,) * len(problem.outputs)


def test_derivative_names_map_to_rows_and_outputs_in_any_axis_order():
    """``d["v_yx"]`` and ``d["v_xy"]`` read the same jet row of output v; undeclared names fail."""
    from dataclasses import dataclass

    from ddpinn.geometry import Box
    from ddpinn.problems import Problem

    @dataclass
    class Pair(Problem):
        inputs = ("x", "y")
        outputs = ("u", "v")
        derivatives = (D("u", "x"), D("v", "y", "x"), D("v", "y", "y", "x"))

        def domain(self):
            return Box((0.0, 0.0), (1.0, 1.0))

    problem = Pair()
    spec = problem.jet_spec()
    assert spec.indices == ((), (0,), (1,), (0, 1), (1, 1), (0, 1, 1))
    jets = torch.arange(2 * len(spec) * 2, dtype=F64).reshape(2, len(spec), 2)
    d = Derivatives(jets, problem.derivative_names(spec))
    torch.testing.assert_close(d["u"], jets[:, 0, 0])
    torch.testing.assert_close(d["v"], jets[:, 0, 1])
    torch.testing.assert_close(d["u_x"], jets[:, 1, 0])
    for name in ("v_xy", "v_yx"):
        torch.testing.assert_close(d[name], jets[:, 3, 1])
    for name in ("v_xyy", "v_yxy", "v_yyx"):
        torch.testing.assert_close(d[name], jets[:, 5, 1])
    assert "u_y" not in d
    with pytest.raises(KeyError, match="derivative 'u_y' was not declared"):
        d["u_y"]
