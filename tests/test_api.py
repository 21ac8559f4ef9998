"""``ddpinn.load`` and ``TrainedModel.predict``: the trainer's own numbers, derivatives, learned
parameters, the argument checks, and the example script in ``examples/``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import write_yaml

import ddpinn
from ddpinn import D, PredictError
from ddpinn.cli import main
from ddpinn.config import ConfigError
from ddpinn.train.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

P4_TINY = {
    "problem": {"name": "poisson2d", "params": {"frequencies": [2.0]}},
    "decomposition": {"levels": 2},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": [10, 10], "test_n": [30, 20]},
    "optimizer": {"lr": 3e-3},
    "train": {"steps": 60, "log_every": 30, "eval_every": 30, "checkpoint_every": 30, "compile": "off"},
    "run": {"name": "p4", "plots": False, "threads": 1},
}


def train(tmp: Path, data: dict, name: str) -> Path:
    """Train ``data`` through the CLI into ``tmp/runs/name``; returns the run directory."""
    data = {**data, "run": {**data["run"], "name": name, "output_dir": str(tmp / "runs")}}
    assert main(["train", str(write_yaml(tmp / f"{name}.yaml", data)), "--quiet"]) == 0
    return tmp / "runs" / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny P4 runs in float32 (the default) and float64."""
    tmp = tmp_path_factory.mktemp("api")
    return {
        dtype: train(tmp, {**P4_TINY, "run": {**P4_TINY["run"], "dtype": dtype}}, f"p4_{dtype}")
        for dtype in ("float32", "float64")
    }


def results(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test grid's points [n, dim] and the trainer's prediction there [n, n_out]."""
    with h5py.File(run_dir / "results.h5") as f:
        x = f["x"][()]
        return x.reshape(-1, x.shape[-1]), f["prediction"][()].reshape(-1, f["prediction"].shape[-1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_equals_the_trainers_prediction_on_the_test_grid(runs, dtype):
    model = ddpinn.load(runs[dtype])
    x, expected = results(runs[dtype])
    got = model.predict(x, batch_size=97)  # many chunks, the last one short
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 if dtype == "float64" else 1e-6)
    assert model.step == 60 and model.dtype == getattr(torch, dtype)


def test_derivatives_equal_finite_differences_of_predict(runs):
    model = ddpinn.load(runs["float64"])
    x = np.random.default_rng(1).uniform(0.1, 0.9, (40, 2))
    d = model.predict(x, derivatives=["u", "u_x", "u_y", "u_xx", D("u", "y", "y"), "u_xy", "u_yx"])
    assert list(d) == ["u", "u_x", "u_y", "u_xx", "u_yy", "u_xy", "u_yx"] and d["u"].shape == (40,)

    def u(shift):
        return model.predict(x + np.asarray(shift))[:, 0]

    h = 1e-3
    ex, ey = np.array([h, 0.0]), np.array([0.0, h])
    scale = np.abs(d["u_xx"]).max()
    np.testing.assert_allclose(d["u"], u([0, 0]), atol=1e-14)
    np.testing.assert_allclose(d["u_x"], (u(ex) - u(-ex)) / (2 * h), atol=1e-5 * scale)
    np.testing.assert_allclose(d["u_y"], (u(ey) - u(-ey)) / (2 * h), atol=1e-5 * scale)
    np.testing.assert_allclose(d["u_xx"], (u(ex) - 2 * u([0, 0]) + u(-ex)) / h**2, atol=1e-4 * scale)
    np.testing.assert_allclose(d["u_yy"], (u(ey) - 2 * u([0, 0]) + u(-ey)) / h**2, atol=1e-4 * scale)
    mixed = (u(ex + ey) - u(ex - ey) - u(ey - ex) + u(-ex - ey)) / (4 * h**2)
    np.testing.assert_allclose(d["u_xy"], mixed, atol=1e-4 * scale)
    np.testing.assert_array_equal(d["u_xy"], d["u_yx"])


def test_torch_in_torch_out_and_lists_give_numpy(runs):
    model = ddpinn.load(runs["float32"])
    x = np.array([[0.25, 0.5], [0.5, 0.75]])
    from_numpy = model.predict(x)
    from_torch = model.predict(torch.from_numpy(x))
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32 and not from_torch.requires_grad
    np.testing.assert_array_equal(from_torch.double().numpy(), from_numpy)
    np.testing.assert_array_equal(model.predict(x.tolist()), from_numpy)
    d = model.predict(torch.from_numpy(x), derivatives="u_x")
    assert list(d) == ["u_x"] and isinstance(d["u_x"], torch.Tensor) and d["u_x"].shape == (2,)
    assert model.predict(np.zeros((0, 2))).shape == (0, 1)


def test_exact_properties_and_repr(runs):
    model = ddpinn.load(runs["float64"])
    x = np.array([[0.25, 0.5], [0.1, 0.9]])
    expected = model.problem.exact(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(model.exact(x), expected)
    assert model.inputs == ("x", "y") and model.outputs == ("u",) and model.has_exact
    assert model.config.problem.name == "poisson2d" and model.parameters == {} and model.true_parameters == {}
    assert model.domain.lo == (0.0, 0.0) and model.domain.hi == (1.0, 1.0)
    text = repr(model)
    assert "poisson2d" in text and "step 60" in text and "\n" not in text and "5 subdomains" in text


@pytest.mark.parametrize("x, message", [
    (np.zeros((4, 3)), "predict: x has 3 columns; this model's inputs are ['x', 'y'] (x: [n, 2])"),
    (np.zeros(2), "predict: x has shape [2]; this model's inputs are ['x', 'y'] (x: [n, 2]); for one point pass x[None, :]"),
    (np.array([[0.5, 0.5], [np.nan, 0.1]]), "predict: x has NaN or infinite values in 1 row(s), first row 1: [nan, 0.1]"),
    (np.array([[0.5, 0.5], [1.2, 0.5], [0.5, -0.1]]), "predict: 2 point(s) of x lie outside the domain (x in [0, 1], y in [0, 1]), first row 1"),
    (np.array([["a", "b"]]), "predict: x must hold real numbers"),
])
def test_bad_points_are_refused_with_the_argument_named(runs, x, message):
    model = ddpinn.load(runs["float32"])
    with pytest.raises(PredictError) as err:
        model.predict(x)
    assert str(err.value).startswith(message)


def test_points_on_the_boundary_up_to_round_off_are_inside(runs):
    model = ddpinn.load(runs["float32"])
    edge = np.array([[0.0, 1.0 + 1e-15], [0.1 * 10, 0.5]])
    assert np.all(np.isfinite(model.predict(edge)))


@pytest.mark.parametrize("name", ["u_z", "v", "v_x", "u_", "ux", D("u", "z"), D("v", "x"), 3])
def test_unknown_derivatives_are_refused(runs, name):
    model = ddpinn.load(runs["float32"])
    with pytest.raises(PredictError, match=r"predict: (unknown derivative|derivatives must be)"):
        model.predict(np.array([[0.5, 0.5]]), derivatives=[name])


def test_bad_batch_size_is_refused(runs):
    with pytest.raises(PredictError, match="batch_size must be a whole number >= 1, got 0"):
        ddpinn.load(runs["float32"]).predict(np.array([[0.5, 0.5]]), batch_size=0)


def test_load_errors_name_the_run_directory_and_the_fix(runs, tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        ddpinn.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="config.yaml does not exist; run_dir must be a run directory"):
        ddpinn.load(tmp_path)
    shutil.copy(runs["float32"] / "config.yaml", tmp_path / "config.yaml")
    with pytest.raises(CheckpointError, match="has no checkpoint.h5 yet; train the run"):
        ddpinn.load(tmp_path)
    # A config that no longer describes the checkpoint's model is refused, field by field.
    shutil.copy(runs["float32"] / "checkpoint.h5", tmp_path / "checkpoint.h5")
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(re.sub(r"hidden:\n(\s+)- 8", r"hidden:\n\1- 9", text))
    with pytest.raises(ConfigError, match="network.hidden: \\[8\\] -> \\[9\\]"):
        ddpinn.load(tmp_path)


def test_damaged_checkpoint_falls_back_to_the_previous_one_with_a_warning(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["float32"], run)
    assert (run / "checkpoint.prev.h5").exists()
    (run / "checkpoint.h5").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        model = ddpinn.load(run)
    assert model.step == load_checkpoint(run / "checkpoint.prev.h5").step
    explicit = ddpinn.load(runs["float32"], checkpoint=runs["float32"] / "checkpoint.prev.h5")
    np.testing.assert_array_equal(model.predict([[0.3, 0.4]]), explicit.predict([[0.3, 0.4]]))


def test_learned_parameters_and_their_true_values(tmp_path):
    run = train(tmp_path, {
        "problem": {"name": "harmonic_inverse", "params": {"w0": 20.0, "mu": 1.0}},
        "decomposition": {"levels": 2}, "network": {"hidden": [8]},
        "sampling": {"method": "grid", "n": 50, "test_n": 40},
        "train": {"steps": 20, "log_every": 10, "eval_every": 20, "compile": "off"},
        "run": {"name": "inverse", "plots": False, "threads": 1},
    }, "inverse")
    model = ddpinn.load(run)
    stored = float(load_checkpoint(run / "checkpoint.h5").arrays["problem/mu"][0])
    assert model.parameters == {"mu": stored} and stored != 1.0  # trained away from its start
    assert isinstance(model.problem.mu, float) and model.problem.mu == stored
    assert model.true_parameters == {"mu": 2 * model.problem.d}
    assert "mu = " in repr(model)
    x = np.linspace(0, 1, 7)  # a 1-D array is n points of a one-input model
    assert model.predict(x).shape == (7, 1)


NO_EXACT = '''
from dataclasses import dataclass
import torch
from ddpinn import Box, D, HardConstraint, Problem

@dataclass
class Ramp(Problem):
    """du/dx = cos(x) on [0, 2], u(0) = 0; no exact solution declared."""
    inputs = ("x",)
    derivatives = (D("u", "x"),)
    def domain(self): return Box((0.0,), (2.0,))
    def residual(self, x, d): return d["u_x"] - torch.cos(x[:, 0])
    def hard_constraint(self, x): return HardConstraint(scale=x[:, 0], shift=0.0)
'''


def test_a_user_problem_loads_from_another_directory_and_has_no_exact(tmp_path, monkeypatch):
    (tmp_path / "ramp.py").write_text(NO_EXACT)
    data = {
        "problem": {"name": "ramp.py:Ramp"}, "decomposition": {"levels": 2}, "network": {"hidden": [8]},
        "sampling": {"method": "grid", "n": 30, "test_n": 25},
        "train": {"steps": 10, "log_every": 10, "eval_every": 10, "compile": "off"},
        "run": {"name": "ramp", "plots": False, "threads": 1, "output_dir": "runs"},
    }
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(write_yaml(tmp_path / "ramp.yaml", data)), "--quiet"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = ddpinn.load(tmp_path / "runs" / "ramp")
    x, expected = results(tmp_path / "runs" / "ramp")
    np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=1e-6)
    assert not model.has_exact
    with pytest.raises(PredictError, match="exact: problem '.*ramp.py:Ramp' has no exact solution"):
        model.exact(x)


@pytest.mark.slow
def test_example_script_trains_loads_predicts_and_plots(tmp_path):
    run = tmp_path / "example_run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "using_a_trained_model.py"), str(run)],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**_env(), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "plots" / "example.png").stat().st_size > 10_000
    error = float(re.search(r"max \|u - exact\| on 10,000 new points: ([0-9.e+-]+)", proc.stdout).group(1))
    assert error < 5e-2, proc.stdout
    residual = float(re.search(r"rel. PDE residual -\(u_xx \+ u_yy\) - f: ([0-9.e+-]+)", proc.stdout).group(1))
    assert residual < 0.2, proc.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
