"""Conditioned (parametric) inputs: a problem parameter as an input axis that is not decomposed.

Windows ignore the parameter axis, the process grid never cuts it, the conditioned problem is
the base problem at every parameter value (residual of the exact solution, the ansatz), config
errors name the field, and a short run lowers the error at a parameter value it never saw."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import autodiff_jets, write_yaml

import ddpinn
from ddpinn.api import TrainedModel
from ddpinn.build import build_experiment
from ddpinn.cli import main
from ddpinn.config import ConfigError, load_config
from ddpinn.geometry import Box, cover_level
from ddpinn.jets import D, JetSpec
from ddpinn.parallel.policy import plan_grid
from ddpinn.problems import Constraint, Derivatives, Point, Points, Problem
from ddpinn.problems.conditioned import condition
from ddpinn.problems.library.cos1d import Cos1D

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "problem": {"name": "cos1d", "conditioned": {"omega": [5.0, 15.0]}},
    "decomposition": {"levels": [{"subdomains": [8]}], "overlap": 1.9},
    "network": {"hidden": [16]},
    "sampling": {"method": "grid", "n": [200, 7], "test_n": [200, 5]},
    "optimizer": {"lr": 3e-3},
    "train": {"steps": 10, "log_every": 10, "eval_every": 10, "compile": "off"},
    "run": {"name": "cond", "plots": False, "threads": 1},
}


def experiment(**sections):
    data = {**TINY, **sections}
    return build_experiment(load_config(data=data))


def test_the_parameter_becomes_an_input_spanned_by_one_subdomain_per_level():
    exp = experiment(decomposition={"levels": 3})
    assert exp.problem.inputs == ("x", "omega") and exp.problem.parameter_inputs == ("omega",)
    assert exp.decomposition.domain == Box((-2 * math.pi, 5.0), (2 * math.pi, 15.0))
    # The multilevel layout doubles the subdomains along x only.
    assert [level.shape for level in exp.decomposition.levels] == [(1, 1), (2, 1), (4, 1)]
    for level in exp.decomposition.levels:  # one subdomain of the range's width: omega normalised to [-1, 1]
        assert level.centres[1].tolist() == [10.0] and level.widths[1].tolist() == [10.0]
    assert exp.level_sizes == ((2, 16, 1),) * 3


def test_windows_do_not_depend_on_the_parameter_axis():
    exp = experiment()
    level = exp.decomposition.levels[0]
    spec = JetSpec.closure(2, [(0,), (1,), (0, 1), (1, 1)])  # derivatives along omega too
    x = torch.tensor([[-1.3, 5.0], [-1.3, 7.5], [-1.3, 15.0], [4.0, 9.0], [4.0, 13.2]], dtype=torch.float64)
    cov = cover_level(level, x, exp.window, spec)
    window = cov.window  # [S, J, P]
    real = cov.point_index < x.shape[0]  # [S, P]
    for row in (spec.row((1,)), spec.row((0, 1)), spec.row((1, 1))):
        assert torch.all(window[:, row][real] == 0)  # no jet along omega
    assert torch.any(window[:, spec.row((0,))][real] != 0)  # but along x
    # The windows at (x, omega) are the same for every omega: compare point by point.
    value = torch.zeros(x.shape[0], level.n_subdomains, dtype=torch.float64)
    for s, sid in enumerate(cov.subdomain_ids.tolist()):
        keep = real[s]
        value[cov.point_index[s][keep], sid] = window[s, 0][keep]
    assert torch.equal(value[0], value[1]) and torch.equal(value[0], value[2]) and torch.equal(value[3], value[4])
    # And the networks see omega normalised to [-1, 1].
    t = cov.x_norm[:, 1][real]
    assert t.min() == -1.0 and t.max() == 1.0


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_the_process_grid_never_cuts_the_parameter_axis(world_size):
    exp = experiment(decomposition={"levels": [{"subdomains": [16]}]})
    assert exp.cells[1] == 1
    grid = plan_grid(exp, world_size)
    assert grid == (world_size, 1)


def test_residual_and_ansatz_are_the_base_problem_at_each_parameter_value():
    exp = experiment()
    problem = exp.problem
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([rng.uniform(-2 * math.pi, 2 * math.pi, 50), rng.uniform(5, 15, 50)], axis=1))
    spec = problem.jet_spec()
    jets = autodiff_jets(problem.exact, x, spec)  # the exact solution's own jets, [n, J, 1]
    residual = problem.residual(x, Derivatives(jets, problem.derivative_names(spec)))
    assert residual.abs().max() < 1e-12
    # The output scale 1/omega is a per-point factor of the ansatz: u = tanh(omega x)/omega * N.
    assert exp.output_scale == (1.0,) and exp.output_mean == (0.0,)
    hc = problem.hard_constraint(x)
    omega, xx = x[:, 1], x[:, 0]
    torch.testing.assert_close(hc.scale[:, 0], torch.tanh(omega * xx) / omega, rtol=0, atol=1e-15)
    for k in (0, 17, 49):  # the same as the plain problem at that omega
        plain = Cos1D(omega=float(omega[k]))
        torch.testing.assert_close(problem.exact(x[k:k + 1]), plain.exact(x[k:k + 1, :1]), rtol=0, atol=1e-15)
    assert problem.base.omega == 10.0  # the bound columns are released after each call


@pytest.mark.parametrize(
    "conditioned,fragment",
    [
        ({"omega": [15, 5]}, "problem.conditioned.omega: empty range [15, 5]"),
        ({"omega": [5, 5]}, "problem.conditioned.omega: empty range"),
        ({"omega": [5]}, "problem.conditioned.omega: give the parameter's range as [lo, hi]"),
        ({"omega": [-1, 5]}, "problem.conditioned.omega: the range end -1 is not a valid value"),
        ({"nu": [1, 2]}, "problem.conditioned.nu: Cos1D has no parameter 'nu'"),
    ],
)
def test_bad_conditioned_config_names_the_field(conditioned, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        experiment(problem={"name": "cos1d", "conditioned": conditioned})


def test_a_parameter_the_problem_cannot_condition_on_is_refused():
    with pytest.raises(ConfigError, match=r"problem.conditioned.omega2: MultiscaleCos1D cannot be conditioned"):
        experiment(problem={"name": "multiscale_cos1d", "conditioned": {"omega2": [5, 15]}})


def test_partition_axes_may_not_name_a_parameter():
    with pytest.raises(ConfigError, match=r"parallel.partition_axes: \['omega'\] are parameter inputs"):
        experiment(parallel={"partition_axes": ["omega"]})


@dataclass
class Decay(Problem):
    """u' = -k u, u(0) = 1 by a soft constraint at a point; k conditionable."""

    k: float = 1.0
    inputs = ("t",)
    derivatives = (D("u", "t"),)
    conditionable = ("k",)

    def domain(self):
        return Box((0.0,), (1.0,))

    def residual(self, x, d):
        return d["u_t"] + self.k * d["u"]

    def constraints(self):
        return [Constraint("start", Point((0.0,)), lambda x, d: d["u"] - 1.0 + 0 * self.k, n_points=9)]

    def exact(self, x):
        return torch.exp(-self.k * x[:, 0])[:, None]


def test_a_point_constraint_becomes_a_line_across_the_parameter_range():
    problem = condition(Decay(), {"k": [1.0, 3.0]})
    (start,) = problem.constraints()
    assert isinstance(start.where, Points)
    x = start.where.x
    assert x.shape == (9, 2) and torch.all(x[:, 0] == 0) and x[:, 1].tolist() == np.linspace(1, 3, 9).tolist()
    assert problem.hard_constraint(x) is None  # the base has no ansatz and a constant output scale


def test_a_problem_may_declare_parameter_inputs_itself(tmp_path):
    """A user's problem with an input it reads as a parameter: one subdomain spans it."""
    source = '''
import torch
from dataclasses import dataclass
from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems import Problem

@dataclass
class Decay(Problem):
    inputs = ("t", "k")
    parameter_inputs = ("k",)
    derivatives = (D("u", "t"),)
    def domain(self): return Box((0.0, 1.0), (1.0, 3.0))
    def residual(self, x, d): return d["u_t"] + x[:, 1] * d["u"]
'''
    path = tmp_path / "decay.py"
    path.write_text(source)
    exp = experiment(problem={"name": f"{path}:Decay"}, decomposition={"levels": 2}, sampling=TINY["sampling"])
    assert [level.shape for level in exp.decomposition.levels] == [(1, 1), (2, 1)]
    assert exp.cells[1] == 1


def test_a_short_run_lowers_the_error_at_an_unseen_parameter_value(tmp_path):
    """Trained on 7 omega values in [1, 2] (1, 1.17, ...), evaluated through ddpinn.load at 1.3
    and 1.9, against the same networks at their initial (seeded) parameters."""
    data = {**TINY, "problem": {"name": "cos1d", "conditioned": {"omega": [1.0, 2.0]}},
            "train": {**TINY["train"], "steps": 300, "log_every": 300, "eval_every": 300}}
    data["run"] = {**TINY["run"], "output_dir": str(tmp_path / "runs")}
    assert main(["train", str(write_yaml(tmp_path / "cond.yaml", data)), "--quiet"]) == 0
    trained = ddpinn.load(tmp_path / "runs" / "cond")
    untrained = TrainedModel(trained.experiment, trained.experiment.make_model(), parameters={}, step=0,
                             checkpoint=trained.checkpoint, device=trained.device)
    x = np.linspace(-2 * math.pi, 2 * math.pi, 400)
    for omega in (1.3, 1.9):
        points = np.stack([x, np.full_like(x, omega)], axis=1)
        exact = np.sin(omega * x) / omega
        np.testing.assert_allclose(trained.exact(points)[:, 0], exact, rtol=0, atol=1e-12)
        before, after = (np.linalg.norm(m.predict(points)[:, 0] - exact) / np.linalg.norm(exact)
                         for m in (untrained, trained))
        assert after < 0.5 * before, f"omega={omega}: rel L2 {before:.3f} -> {after:.3f} in 300 steps"


def test_the_benchmark_case_writes_errors_at_the_unseen_omegas_and_the_plot(tmp_path, monkeypatch):
    """benchmarks/inverse.py's cos1d_conditioned case on a tiny run: rows per seed and over seeds
    at omega = 7.5 and 12.5, the verdict row, and the rel-L2-across-omega plot."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import inverse

    tiny = {"train.steps": "4", "train.log_every": "2", "train.eval_every": "0", "network.hidden": "[4]",
            "network.fourier.features": "2", "sampling.n": "200", "sampling.test_n": "[20, 3]",
            "decomposition.levels": "[{subdomains: [4]}]"}
    case = inverse.Case("cos1d_conditioned", inverse.run_conditioned, None, "cos1d_conditioned_quick.yaml", tiny)
    monkeypatch.setattr(inverse, "CASES", [case])
    out = tmp_path / "out"
    assert inverse.main(["--quick", "--seeds", "0", "1", "--out", str(out), "--json", str(tmp_path / "rows.json")]) == 0
    rows = {(r["quantity"], r["seed"]): r for r in json.loads((tmp_path / "rows.json").read_text())}
    for seed in (0, 1):
        assert 0 < rows[("rel_l2 at omega=7.5", seed)]["value"] < 10 and ("rel_l2 at omega=12.5", seed) in rows
    low, mid, high = (rows[(f"rel_l2 at omega=7.5 {k}", None)]["value"] for k in ("min", "median", "max"))
    assert low <= mid <= high and low == min(rows[("rel_l2 at omega=7.5", s)]["value"] for s in (0, 1))
    assert rows[("target rel_l2 <= 0.01 at unseen omega (median over seeds)", None)]["value"] == 0.0
    assert (out / "inverse_conditioned.png").stat().st_size > 0
