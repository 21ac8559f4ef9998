"""Bad configs are rejected before any training step, by ``ddpinn check`` (exit status 2), with a
message that names the offending field.

One table: each case is a set of ``--set`` overrides on a small valid config (cos1d, 4
subdomains), the fragments the message must contain, and, for known bugs, an xfail reason.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from ddpinn.build import build_experiment
from ddpinn.cli import main
from ddpinn.config import ConfigError, load_config
from ddpinn.session import run_training
from helpers import write_yaml

BASE = {
    "problem": {"name": "cos1d"},
    "decomposition": {"levels": [{"subdomains": 4}]},
    "sampling": {"n": 50, "test_n": 50},
    "train": {"steps": 3, "compile": "off"},
    "run": {"threads": 1, "plots": False},
}

USER_PROBLEMS = textwrap.dedent(
    """
    from dataclasses import dataclass
    from ddpinn.geometry import Box
    from ddpinn.jets import D
    from ddpinn.problems import Problem

    class _Line(Problem):
        inputs = ("x",)
        def domain(self):
            return Box((0.0,), (1.0,))

    @dataclass
    class UnknownAxis(_Line):
        derivatives = (D("u", "z"),)
        def residual(self, x, d):
            return d["u_z"]

    @dataclass
    class UnknownField(_Line):
        derivatives = (D("v", "x"),)
        def residual(self, x, d):
            return d["v_x"]

    @dataclass
    class Undeclared(_Line):
        derivatives = (D("u", "x"),)
        def residual(self, x, d):
            return d["u_xx"] - 1.0

    class NotAProblem:
        pass
    """
)

CASES = [
    # (id, overrides, fragments, xfail reason)
    ("unknown-key", ["train.stesp=3"], ["train.stesp: unknown key", "did you mean 'steps'?"], None),
    ("unknown-section", ["trian.steps=3"], ["trian: unknown key", "did you mean 'train'?"], None),
    ("unknown-level-key", ["decomposition.levels=[{subdomians: 4}]"],
     ["decomposition.levels[0].subdomians: unknown key", "did you mean 'subdomains'?"], None),
    ("wrong-type", ["train.steps=abc"], ["train.steps: expected int, got 'abc'"], None),
    ("wrong-type-in-list", ["network.hidden=[16, wide]"], ["network.hidden[1]: expected int, got 'wide'"], None),
    ("wrong-type-section", ["train=5"], ["train: expected a mapping"], None),
    ("bad-choice", ["run.dtype=float16"], ["run.dtype: 'float16' is not one of"], None),
    ("zero-steps", ["train.steps=0"], ["train.steps: zero steps in total"], None),
    ("negative-lr", ["optimizer.lr=-1e-3"], ["optimizer.lr: must be > 0"], None),
    ("sigmoid-core", ["decomposition.window=sigmoid", "decomposition.sigmoid_core=1.5"],
     ["decomposition.sigmoid_core: must be in (0, 1)"], None),
    ("negative-width", ["decomposition.levels=[{subdomains: 4, widths: -1.0}]"],
     ["decomposition.levels[0].widths[0]: widths must be positive"], None),
    ("zero-width", ["decomposition.levels=[{subdomains: 4, widths: 0}]"],
     ["decomposition.levels[0].widths[0]: widths must be positive"], None),
    ("zero-subdomains", ["decomposition.levels=[{subdomains: 0}]"], ["decomposition.levels[0].subdomains: must be >= 1"], None),
    ("zero-overlap", ["decomposition.overlap=0"], ["decomposition.overlap: must be > 0"], None),
    ("negative-level-overlap", ["decomposition.levels=[{subdomains: 4, overlap: -1}]"],
     ["decomposition.levels[0].overlap: must be > 0"], None),
    ("gap", ["decomposition.overlap=0.9"], ["decomposition.levels[0]: subdomains leave a gap in x", "increase the overlap"], None),
    ("gap-touching", ["decomposition.overlap=1.0"], ["decomposition.levels[0]: subdomains leave a gap in x", "overlap"], None),
    ("gap-second-level", ["decomposition.levels=[{subdomains: 2}, {subdomains: 5, overlap: 0.95}]"],
     ["decomposition.levels[1]: subdomains leave a gap in x", "overlap"], None),
    ("gap-multilevel", ["decomposition.levels=3", "decomposition.overlap=0.9"],
     ["decomposition.overlap: level 2 of the multilevel layout", "gap in x", "the overlap (0.9) must be greater than 1"], None),
    ("unknown-problem", ["problem.name=cos2d"], ["problem.name: unknown problem 'cos2d'", "'cos1d'"], None),
    ("unknown-parameter", ["problem.params={omgea: 3}"], ["problem.params.omgea", "has no parameter 'omgea'", "'omega'"], None),
    ("wrong-parameter-type", ["problem.params={omega: fast}"], ["problem.params.omega: expected float"], None),
    ("invalid-parameter", ["problem={name: burgers, params: {nu: -1}}", "decomposition.levels=2"],
     ["problem.params.nu: must be > 0"], None),
    ("parameter-zero-division", ["problem.params={omega: 0}"], ["problem.params.omega: must be > 0"], None),
    ("parameter-empty-domain", ["problem={name: heat2d_ms, params: {t_end: -1}}", "decomposition.levels=2"],
     ["problem.params.t_end: must be > 0"], None),
    ("unknown-axis", ["problem.name={dir}/user.py:UnknownAxis"],
     ["UnknownAxis.derivatives", "'u_z' uses input 'z'", "['x']"], None),
    ("unknown-field", ["problem.name={dir}/user.py:UnknownField"], ["UnknownField.derivatives", "field 'v'", "['u']"], None),
    ("undeclared-derivative", ["problem.name={dir}/user.py:Undeclared"], ["Undeclared", "'u_xx' was not declared"], None),
    ("problem-file-missing", ["problem.name={dir}/nowhere.py:Foo"], ["problem.name: file", "not found"], None),
    ("not-a-problem", ["problem.name={dir}/user.py:NotAProblem"], ["problem.name: 'NotAProblem'", "not a ddpinn Problem"], None),
    ("n-length", ["sampling.n=[10, 10]"], ["sampling.n: 2 per-axis counts for 1 axes ['x']"], None),
    ("test-n-length", ["sampling.test_n=[10, 10, 10]"], ["sampling.test_n: 3 per-axis counts for 1 axes"], None),
    ("zero-samples", ["sampling.n=0"], ["sampling.n: need at least 1 point"], None),
    ("resample-grid", ["sampling.resample_every=10"], ["sampling.resample_every", "grid points never change"], None),
    ("centres-per-axis", ["decomposition.levels=[{centres: [[0.0, 1.0], [0.0, 1.0]]}]"],
     ["decomposition.levels[0].centres: need one list per axis (1), got 2"], None),
    ("widths-per-subdomain", ["decomposition.levels=[{subdomains: 3, widths: [[1.0, 2.0]]}]"],
     ["decomposition.levels[0].widths[0]: 2 widths for 3 centres"], None),
    ("output-scale-count", ["network.output_scale=[1.0, 2.0]"], ["network.output_scale: 2 values for 1 outputs"], None),
    ("level-policy-count", ["parallel.level_policy=[auto, auto]"], ["parallel.level_policy: 2 entries for 1 levels"], None),
    ("malformed-set", ["train"], ["--set 'train': expected key.path=value"], None),
    # adaptive training
    ("causal-without-time", ["loss.causal.enabled=true"], ["loss.causal.axis: 't' is not an input", "['x']"], None),
    ("causal-one-chunk", ["loss.causal.chunks=1"], ["loss.causal.chunks: need at least 2"], None),
    ("causal-negative-epsilon", ["loss.causal.epsilon=-1"], ["loss.causal.epsilon: must be >= 0"], None),
    ("self-adaptive-lbfgs-only", ["loss.weighting=self_adaptive", "train.steps=0", "lbfgs.steps=10"],
     ["loss.weighting: self_adaptive weights are learnt by ascent during the Adam steps"], None),
    ("self-adaptive-mask", ["loss.self_adaptive.mask=cube"], ["loss.self_adaptive.mask: 'cube' is not one of"], None),
    ("balanced-momentum", ["loss.balanced.momentum=1.0"], ["loss.balanced.momentum: must be in [0, 1)"], None),
    ("rad-on-grid", ["sampling.adaptive.method=rad"], ["sampling.method: rad draws its candidates at random"], None),
    ("rad-few-candidates", ["sampling.method=uniform", "sampling.adaptive.method=rad",
                            "sampling.adaptive.candidate_factor=0.5"], ["sampling.adaptive.candidate_factor: must be >= 1"], None),
    ("rebalance-below-one", ["parallel.rebalance_above=0.9"], ["parallel.rebalance_above: must be >= 1"], None),
]


@pytest.fixture
def config_file(tmp_path):
    (tmp_path / "user.py").write_text(USER_PROBLEMS)
    return write_yaml(tmp_path / "base.yaml", {**BASE, "run": {**BASE["run"], "output_dir": str(tmp_path / "runs")}})


def test_the_base_config_checks(config_file, capsys):
    assert main(["check", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "derivatives   ['u', 'u_x']" in out
    assert "level 1: 4 subdomains" in out and "total pairs" in out


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        pytest.param(o, f, id=i, marks=[pytest.mark.xfail(reason=bug, strict=True)] if bug else [])
        for i, o, f, bug in CASES
    ],
)
def test_bad_config_is_rejected_by_check(config_file, capsys, overrides, fragments):
    args = ["check", str(config_file)]
    for o in overrides:
        args += ["--set", o.replace("{dir}", str(config_file.parent))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpinn: error: ")
    for fragment in fragments:
        assert fragment in err
    assert not (config_file.parent / "runs").exists()  # nothing was trained or written


def test_missing_config_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml' not found" in capsys.readouterr().err


def test_undeclared_derivative_fails_training_naming_the_derivative(config_file):
    """The API path too: the run stops before any step, naming the derivative."""
    cfg = load_config(config_file, [f"problem.name={config_file.parent}/user.py:Undeclared"])
    with pytest.raises(ConfigError, match="u_xx"):
        run_training(cfg, quiet=True)


def test_explicit_levels_build_the_declared_subdomains(tmp_path):
    """Per-level centres, widths, overlap and hidden sizes reach the decomposition and the nets."""
    exp = build_experiment(load_config(data={
        "problem": {"name": "poisson2d"},
        "decomposition": {"overlap": 1.5, "levels": [
            {"subdomains": 1, "hidden": [4]},
            {"centres": [[0.0, 0.25, 1.0], [0.0, 1.0]], "overlap": 2.0},
            {"subdomains": [3, 2], "widths": [[0.8, 0.8, 0.8], [1.5, 1.2]]},
        ]},
        "network": {"hidden": [8, 8]},
        "run": {"output_dir": str(tmp_path)},
    }))
    coarse, uneven, given = exp.decomposition.levels
    np.testing.assert_allclose(coarse.subdomain_centres(), [[0.5, 0.5]])
    np.testing.assert_allclose(coarse.subdomain_widths(), [[1.5, 1.5]])  # overlap × domain length
    np.testing.assert_allclose(uneven.widths[0], [1.0, 1.0, 1.0])  # 2.0 × mean spacing 0.5
    np.testing.assert_allclose(uneven.widths[1], [2.0, 2.0])
    np.testing.assert_allclose(given.centres[0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(given.widths[0], [0.8, 0.8, 0.8])
    np.testing.assert_allclose(given.widths[1], [1.5, 1.2])
    assert exp.level_sizes == ((2, 4, 1), (2, 8, 8, 1), (2, 8, 8, 1))
    model = exp.make_model()
    assert [net.n_subdomains for net in model.nets] == [1, 6, 6]


def test_api_path_raises_config_error_with_the_same_message():
    with pytest.raises(ConfigError, match=r"^train\.stesp: unknown key; did you mean 'steps'\?$"):
        load_config(data={**BASE, "train": {"stesp": 3}})
