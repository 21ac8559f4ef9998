"""Equation discovery (ddpinn.discovery, the ``discovery`` problem): the candidate library and its
names, STRidge on normal equations, Θ from jets, bad input, and a short training run whose ξ is
fitted at the stated steps, logged, summarised and resumed exactly from the checkpoint."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpinn.build import build_experiment
from ddpinn.config import ConfigError, load_config
from ddpinn.discovery import CandidateLibrary, NormalEquations, compare_with_truth, format_equation, stridge
from ddpinn.discovery.alternation import Alternation
from ddpinn.jets import pointwise_jets
from ddpinn.parallel.comm import LocalComm
from ddpinn.problems import make_problem
from ddpinn.problems.reference import burgers_hopf_cole
from ddpinn.session import run_training
from ddpinn.train.checkpoint import load_checkpoint
from ddpinn.train.trainer import Trainer

NU = 0.01 / math.pi


# ----------------------------------------------------------------------------- the library
def test_generated_terms_are_all_monomials_up_to_the_degree_in_declared_order():
    lib = CandidateLibrary.generated(["u", "u_x", "u_xx"], 2)
    assert lib.names == ["1", "u", "u_x", "u_xx", "u^2", "u*u_x", "u*u_xx", "u_x^2", "u_x*u_xx", "u_xx^2"]
    for n, degree in [(4, 1), (4, 2), (4, 3), (2, 5)]:
        assert len(CandidateLibrary.generated([f"d{i}" for i in range(n)], degree)) == math.comb(n + degree, degree)
    assert CandidateLibrary.generated(["u", "u_x"], 3).names[-4:] == ["u^3", "u^2*u_x", "u*u_x^2", "u_x^3"]


def test_explicit_terms_are_named_canonically_whatever_the_factor_order():
    lib = CandidateLibrary.from_names(["u", "u_x", "u_xx"], ["u_x*u", "u_xx", "u_xx*u*u", "1", "u^2*u_xx^2"])
    assert lib.names == ["u*u_x", "u_xx", "u^2*u_xx", "1", "u^2*u_xx^2"]
    assert lib.terms[2] == (0, 0, 2)


def test_theta_columns_from_jets_are_the_products_of_the_exact_derivatives():
    """u = sin(πx) e^{-t} + x t: Θ and u_t as the alternation forms them from the jets equal the
    closed-form derivatives (float64), so the names pick the right jet rows."""
    problem = make_problem("discovery", {"reference": "burgers", "observations": [8, 4],
                                         "library": ["u", "u_x", "u_xx", "u_xxx"], "degree": 2})
    spec = problem.jet_spec()
    x = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def u(p):
        return (torch.sin(math.pi * p[:, 0]) * torch.exp(-p[:, 1]) + p[:, 0] * p[:, 1])[:, None]

    jets = pointwise_jets(u, x, spec)
    alternation = Alternation(problem, problem.derivative_names(spec), LocalComm(), 10, torch.float64, "cpu")
    batch = SimpleNamespace(groups={"pde": slice(0, 50)}, x=x)
    theta, y = alternation.library_values(jets, batch)
    xx, t = x[:, 0], x[:, 1]
    s, c, e = torch.sin(math.pi * xx), torch.cos(math.pi * xx), torch.exp(-t)
    exact = {"u": s * e + xx * t, "u_x": math.pi * c * e + t, "u_xx": -math.pi**2 * s * e,
             "u_xxx": -math.pi**3 * c * e}
    torch.testing.assert_close(y, -s * e + xx, rtol=1e-12, atol=1e-12)
    for k, term in enumerate(problem.candidates.terms):
        want = torch.ones_like(xx)
        for i in term:
            want = want * exact[problem.candidates.derivatives[i]]
        torch.testing.assert_close(theta[:, k], want, rtol=1e-12, atol=1e-12, msg=problem.candidates.names[k])
    # and the normal equations are ΘᵀΘ, Θᵀy over those points
    eqs = alternation.normal_equations(lambda _: jets, batch)
    np.testing.assert_allclose(eqs.gram, (theta.T @ theta).numpy(), rtol=1e-13)
    np.testing.assert_allclose(eqs.rhs, (theta.T @ y).numpy(), rtol=1e-13)
    assert eqs.count == 50 and eqs.target_sq == pytest.approx(float(y @ y), rel=1e-14)


# ----------------------------------------------------------------------------- STRidge
def _equations(theta: np.ndarray, y: np.ndarray) -> NormalEquations:
    return NormalEquations(theta.T @ theta, theta.T @ y, float(y @ y), float(y.size))


def _synthetic(seed=0, n=400, k=10):
    """Columns of very different scales (1e-3 .. 1e3), like u and u_xx near a shock."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n, k)) * np.logspace(-3, 3, k)
    xi = np.zeros(k)
    xi[[2, 7]] = [-1.0, 3e-3]  # the small coefficient sits on a large column: a real contribution
    return theta, xi


def test_stridge_recovers_a_sparse_xi_exactly_from_noiseless_data():
    theta, xi = _synthetic()
    fit = stridge(_equations(theta, theta @ xi), tolerance=0.05)
    assert fit.support.tolist() == (xi != 0).tolist()
    np.testing.assert_allclose(fit.coefficients, xi, rtol=1e-9, atol=1e-12)


def test_stridge_drops_terms_below_the_tolerance_of_the_normalised_contribution():
    theta, xi = _synthetic(1)
    small = xi.copy()
    small[4] = 0.01 * np.sqrt((theta @ xi) @ (theta @ xi)) / np.linalg.norm(theta[:, 4])  # ~1% of RMS(y)
    y = theta @ small
    dropped = stridge(_equations(theta, y), tolerance=0.05)
    assert dropped.support.tolist() == (xi != 0).tolist()
    kept = stridge(_equations(theta, y), tolerance=0.001)
    assert kept.support.tolist() == (small != 0).tolist()
    np.testing.assert_allclose(kept.coefficients, small, rtol=1e-9)
    # the normalised coefficient is the term's RMS contribution relative to RMS(y)
    contribution = np.sqrt(np.mean((theta[:, 4] * small[4]) ** 2) / np.mean(y**2))
    assert abs(kept.normalised[4]) == pytest.approx(contribution, rel=1e-6)


def test_normal_equations_summed_over_parts_give_the_whole_fit():
    """What the all-reduce relies on: the sums of two halves' ΘᵀΘ, Θᵀy give one fit."""
    theta, xi = _synthetic(2)
    y = theta @ xi + 1e-3 * np.random.default_rng(5).standard_normal(theta.shape[0])
    whole = stridge(_equations(theta, y), tolerance=0.05)
    a, b = _equations(theta[:150], y[:150]), _equations(theta[150:], y[150:])
    summed = NormalEquations.from_flat(a.flat() + b.flat(), theta.shape[1])
    np.testing.assert_allclose(stridge(summed, tolerance=0.05).coefficients, whole.coefficients, rtol=1e-10)


def test_stridge_finds_burgers_from_derivatives_of_the_exact_solution():
    """Θ from central differences of the Hopf–Cole solution (h = 1e-5) at |x| >= 0.02, where the
    steps resolve the shock layer's flanks: STRidge keeps exactly u*u_x and u_xx with their
    coefficients (-1, ν) to 1e-4. (Beyond |x| = 0.1 the viscous term is 2% of u_t and a 5%
    threshold drops it: it is the points near the shock that identify ν.)"""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.02, 0.95, 600) * rng.choice([-1, 1], 600)
    t = rng.uniform(0.05, 0.95, 600)
    h = 1e-5

    def u(dx=0.0, dt=0.0):
        return burgers_hopf_cole(x + dx, t + dt, NU)

    derivs = {"u": u(), "u_x": (u(h) - u(-h)) / (2 * h), "u_xx": (u(h) - 2 * u() + u(-h)) / h**2}
    u_t = (u(dt=h) - u(dt=-h)) / (2 * h)
    lib = CandidateLibrary.generated(["u", "u_x", "u_xx"], 2)
    theta = np.stack([np.prod([derivs[lib.derivatives[i]] for i in term] or [np.ones_like(x)], axis=0)
                      for term in lib.terms], axis=1)
    fit = stridge(_equations(theta, u_t), tolerance=0.05)
    found = {n: v for n, v in zip(lib.names, fit.coefficients) if v}
    assert set(found) == {"u*u_x", "u_xx"}
    assert found["u*u_x"] == pytest.approx(-1.0, rel=1e-4) and found["u_xx"] == pytest.approx(NU, rel=1e-4)


def test_equation_text_and_comparison_with_the_truth():
    assert format_equation("u_t", {"u*u_x": -0.998, "u_xx": 0.00319}) == "u_t = -0.998 u*u_x + 0.00319 u_xx"
    assert format_equation("u_t", {"1": 0.5, "u": -2.0}) == "u_t = 0.5 - 2 u"
    assert format_equation("u_t", {}) == "u_t = 0"
    report = compare_with_truth({"u*u_x": -0.99, "u": 0.1}, {"u*u_x": -1.0, "u_xx": NU})
    assert report["rel_error"] == {"u*u_x": pytest.approx(0.01), "u_xx": 1.0}
    assert report["missed"] == ["u_xx"] and report["extra"] == ["u"]


def test_the_fit_leaves_out_the_points_within_the_margin_of_the_edges():
    """fit_margin 0.1 on x in [-1, 1], t in [0, 1]: Θ and y keep only |x| <= 0.8, 0.1 <= t <= 0.9."""
    problem = make_problem("discovery", {"reference": "burgers", "observations": [8, 4], "library": ["u", "u_x"],
                                         "fit_margin": 0.1})
    x = torch.tensor([[0.0, 0.5], [0.79, 0.11], [0.81, 0.5], [-0.85, 0.5], [0.0, 0.05], [0.0, 0.95]],
                     dtype=torch.float64)
    jets = torch.arange(x.shape[0] * len(problem.jet_spec()), dtype=torch.float64).reshape(x.shape[0], -1, 1)
    alternation = Alternation(problem, problem.derivative_names(problem.jet_spec()), LocalComm(), 10,
                              torch.float64, "cpu")
    theta, y = alternation.library_values(jets, SimpleNamespace(groups={"pde": slice(0, 6)}, x=x))
    assert theta.shape[0] == y.shape[0] == 2
    np.testing.assert_array_equal(y.numpy(), jets[:2, problem.derivative_names(problem.jet_spec())["u_t"][0], 0])


def test_learnt_coefficients_are_the_fit_times_one_plus_the_trainable_correction():
    """ξ_eff = ξ_fit (1 + δ) once learning is on (before: ξ_fit), and the residual's gradient by
    δ_k is -θ_k ξ_fit_k, so a term off the support (ξ_fit = 0) is never moved."""
    problem = make_problem("discovery", {"reference": "burgers", "observations": [8, 4], "library": ["u", "u_x"],
                                         "terms": ["u", "u*u_x"], "learn_coefficients": True})
    assert problem.trainable == ("xi_correction[u]", "xi_correction[u*u_x]")
    delta = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True)
             for n, v in zip(problem.trainable, (0.5, 0.1))}
    for name, value in delta.items():
        setattr(problem, name, value)
    problem.coefficients = torch.tensor([0.0, -2.0], dtype=torch.float64)
    problem.residual_on = torch.tensor(1.0, dtype=torch.float64)
    np.testing.assert_allclose(problem.effective_coefficients().detach(), [0.0, -2.0])  # learning off
    problem.learning_on = torch.tensor(1.0, dtype=torch.float64)
    np.testing.assert_allclose(problem.effective_coefficients().detach(), [0.0, -2.2])
    spec = problem.jet_spec()
    names = problem.derivative_names(spec)
    jets = torch.rand(5, len(spec), 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    from ddpinn.problems.base import Derivatives

    d = Derivatives(jets, names)
    problem.residual(None, d).sum().backward()
    assert delta["xi_correction[u]"].grad == 0.0
    assert float(delta["xi_correction[u*u_x]"].grad) == pytest.approx(float((d["u"] * d["u_x"]).sum() * 2.0))


# ----------------------------------------------------------------------------- bad input
def _build(tmp_path, **params):
    data = {"problem": {"name": "discovery", "params": {"reference": "burgers", "observations": [16, 8], **params}},
            "run": {"output_dir": str(tmp_path)}}
    return build_experiment(load_config(data=data))


@pytest.mark.parametrize("params, field, says", [
    ({"library": ["u", "u_y"]}, "problem.params.library", "inputs are ['x', 't']"),
    ({"library": ["v", "u_x"]}, "problem.params.library", "outputs are ['u']"),
    ({"library": ["u", "u_t"]}, "problem.params.library", "contains the target"),
    ({"terms": ["u*u_x", "u*u_xxxx"]}, "problem.params.terms", "not a declared derivative"),
    ({"target": "u_q"}, "problem.params.target", "inputs are"),
    ({"degree": 0}, "problem.params.degree", ">= 1"),
    ({"noise": -0.1}, "problem.params.noise", ">= 0"),
    ({"tolerance": -1e-3}, "problem.params.tolerance", ">= 0"),
    ({"warmup": 0}, "problem.params.warmup", ">= 1"),
    ({"observations": [16]}, "problem.params.observations", "1 counts"),
    ({"fit_margin": 0.5}, "problem.params.fit_margin", "[0, 0.5)"),
    ({"warmup": 10, "last_fit": 5}, "problem.params.last_fit", "before the first fit"),
])
def test_bad_discovery_input_names_the_field(tmp_path, params, field, says):
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, **params)
    assert str(err.value).startswith(field) or f"{field}:" in str(err.value), err.value
    assert says in str(err.value)


def _write_file(tmp_path, suffix, x, t, u):
    path = tmp_path / f"obs{suffix}"
    if suffix == ".npz":
        np.savez(path, x=x, t=t, u=u)
    elif suffix == ".csv":
        np.savetxt(path, np.stack([x, t, u], 1), delimiter=",", header="x,t,u", comments="")
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f["x"], f["t"], f["u"] = x, t, u
    return path


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".h5"])
def test_observations_from_a_file(tmp_path, suffix):
    x, t = np.linspace(-1, 1, 30), np.linspace(0, 1, 30)
    u = -np.sin(np.pi * x) * np.exp(-t)
    path = _write_file(tmp_path, suffix, x, t, u)
    exp = _build(tmp_path, reference="", data_file=str(path), inputs=["x", "t"], bounds=[[-1, 1], [0, 1]])
    (data,) = exp.problem.constraints()
    np.testing.assert_allclose(data.where.x.numpy(), np.stack([x, t], 1))
    np.testing.assert_allclose(data.where.values.numpy()[:, 0], u)
    assert exp.problem.exact(data.where.x) is None


@pytest.mark.parametrize("bad, says", [("nan", "NaN or infinite"), ("outside", "outside the domain")])
def test_bad_observations_in_a_file_name_the_field(tmp_path, bad, says):
    x, t, u = np.linspace(-1, 1, 10), np.linspace(0, 1, 10), np.zeros(10)
    if bad == "nan":
        u[3] = np.nan
    else:
        x[4] = 1.5
    path = _write_file(tmp_path, ".npz", x, t, u)
    with pytest.raises(ConfigError, match=f"problem.params.data_file: .*{says}"):
        _build(tmp_path, reference="", data_file=str(path), inputs=["x", "t"], bounds=[[-1, 1], [0, 1]])
    with pytest.raises(ConfigError, match="problem.params.data_file: .*no column 'u'"):
        np.savez(path, x=x, t=t)
        _build(tmp_path, reference="", data_file=str(path), inputs=["x", "t"], bounds=[[-1, 1], [0, 1]])


def test_sampled_observations_are_the_exact_solution_plus_relative_noise(tmp_path):
    exp = _build(tmp_path, observations=[64, 32], noise=0.1, data_seed=3)
    (data,) = exp.problem.constraints()
    x, values = data.where.x, data.where.values
    assert x.shape == (64 * 32, 2)
    clean = burgers_hopf_cole(x[:, 0].numpy(), x[:, 1].numpy(), NU)
    noise = values[:, 0].numpy() - clean
    assert noise.std() == pytest.approx(0.1 * clean.std(), rel=0.05)
    assert exp.problem.truth == {"u*u_x": -1.0, "u_xx": pytest.approx(NU, rel=1e-15)}


# ----------------------------------------------------------------------------- training
def _run_config(tmp_path, name="run", steps=12):
    return {
        "problem": {"name": "discovery", "params": {
            "reference": "burgers", "observations": [24, 12], "noise": 0.01, "library": ["u", "u_x", "u_xx"],
            "degree": 2, "warmup": 4, "every": 3, "tolerance": 0.01, "data_weight": 10.0}},
        "decomposition": {"levels": [{"subdomains": [2, 1]}]},
        "network": {"hidden": [8]},
        "sampling": {"method": "grid", "n": [12, 6], "test_n": [12, 6]},
        "train": {"steps": steps, "log_every": 2, "eval_every": 0, "checkpoint_every": 6, "compile": "off"},
        "run": {"name": name, "output_dir": str(tmp_path), "dtype": "float64", "threads": 1, "plots": False},
    }


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_training_fits_xi_at_the_stated_steps_and_reports_it(tmp_path):
    run_training(load_config(data=_run_config(tmp_path)), quiet=True)
    run = tmp_path / "run"
    found = _summary(run)["discovery"]
    assert [f["step"] for f in found["fits"]] == [4, 7, 10, 12]  # warmup, every 3, and the last Adam step
    assert found["library"][:3] == ["1", "u", "u_x"] and found["truth"]["u*u_x"] == -1.0
    assert found["coefficients"] == found["fits"][-1]["coefficients"] and found["equation"].startswith("u_t = ")
    assert set(found["rel_error"]) == {"u*u_x", "u_xx"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["discovery"]["coefficients"] is None  # step 2: before the first fit
    assert records[0]["terms"]["pde"] == 0.0  # the residual is off until ξ is known
    assert records[-1]["discovery"]["coefficients"] == found["coefficients"]
    assert records[-1]["terms"]["pde"] > 0
    arrays = load_checkpoint(run / "checkpoint.h5").arrays
    xi = {k.removeprefix("discovery/xi/"): float(v[0]) for k, v in arrays.items() if k.startswith("discovery/xi/")}
    assert {k: v for k, v in xi.items() if v} == found["coefficients"] and arrays["discovery/active"][0] == 1.0


def test_after_the_last_fit_xi_is_learnt_on_its_support_by_gradient(tmp_path, capsys):
    """last_fit 7 with learn_coefficients: fits at 4 and 7 only; the corrections stay exactly 0
    until then and move after it; the support is the last fit's; the corrections and the
    learning flag are in the checkpoint."""
    cfg = _run_config(tmp_path)
    cfg["problem"]["params"].update(last_fit=7, learn_coefficients=True)
    run_training(load_config(data=cfg))
    # The progress line shows the equation with the learnt ξ, not the corrections behind it.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[step")]
    assert lines and "u_t = " in lines[-1] and not any("xi_correction" in line for line in lines)
    run = tmp_path / "run"
    found = _summary(run)["discovery"]
    assert [f["step"] for f in found["fits"]] == [4, 7] and found["learnt"]
    last = found["fits"][-1]["coefficients"]
    assert found["coefficients"].keys() == last.keys()
    assert all(found["coefficients"][k] != v for k, v in last.items())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(v == 0.0 for r in records if r["step"] <= 7 for v in r["problem"].values())
    moved = {k for k, v in records[-1]["problem"].items() if v}
    assert moved == {f"xi_correction[{k}]" for k in last}
    arrays = load_checkpoint(run / "checkpoint.h5").arrays
    assert arrays["discovery/learning"][0] == 1.0
    assert float(arrays["problem/xi_correction[u*u_x]"][0]) == records[-1]["problem"]["xi_correction[u*u_x]"]


def test_xi_resumes_exactly_from_the_checkpoint(tmp_path, monkeypatch):
    """A copy of the run taken right after its checkpoint of step 6 (ξ fitted at step 4, the next
    fit at 7), resumed, reaches the same ξ, fits and losses as the uninterrupted run (ξ itself is
    restored bitwise; the losses then agree to ~1e-12 and ξ to ~1e-8, not bitwise: without fits, where
    the library residual is off, they are bitwise equal, so the round-off enters through the
    residual's sums over the collocation points after the restart)."""
    original = Trainer.save

    def save(self, at_step):
        original(self, at_step)
        if at_step == 6:
            shutil.copytree(self.run_dir, tmp_path / "stopped")

    monkeypatch.setattr(Trainer, "save", save)
    run_training(load_config(data=_run_config(tmp_path, "full")), quiet=True)
    monkeypatch.undo()
    stopped = load_checkpoint(tmp_path / "stopped" / "checkpoint.h5")
    assert stopped.step == 6 and stopped.arrays["discovery/active"][0] == 1.0
    cfg = _run_config(tmp_path, "stopped")
    run_training(load_config(data=cfg), resume=True, quiet=True)
    full, resumed = _summary(tmp_path / "full"), _summary(tmp_path / "stopped")
    assert [f["step"] for f in resumed["discovery"]["fits"]] == [7, 10, 12]  # those after the restart
    for a, b in zip(full["discovery"]["fits"][1:], resumed["discovery"]["fits"], strict=True):
        assert b["coefficients"] == pytest.approx(a["coefficients"], rel=1e-6)
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-10)
