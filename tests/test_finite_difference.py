"""Finite-difference derivatives (``model.derivatives: fd``): the stencils are O(h²) everywhere in
the domain (central inside, one-sided at the faces), the model's fd jets converge to its exact
jets at that rate through the batch (hard constraint, several levels), training with them
converges, and bad steps are config errors naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import full_spec

from ddpinn.build import build_experiment
from ddpinn.config import ConfigError, load_config
from ddpinn.jets import JetSpec
from ddpinn.model.finite_difference import FiniteDifference, difference_weights
from ddpinn.parallel.batching import BatchFactory
from ddpinn.parallel.comm import LocalComm
from ddpinn.session import make_layout, run_training


def test_difference_weights_are_the_textbook_formulas():
    np.testing.assert_allclose(difference_weights([-1, 0, 1], 1), [-0.5, 0, 0.5], atol=1e-14)
    np.testing.assert_allclose(difference_weights([-1, 0, 1], 2), [1, -2, 1], atol=1e-14)
    np.testing.assert_allclose(difference_weights([0, 1, 2], 1), [-1.5, 2, -0.5], atol=1e-14)
    np.testing.assert_allclose(difference_weights([0, 1, 2, 3], 2), [2, -5, 4, -1], atol=1e-13)


def _field(p: np.ndarray) -> np.ndarray:
    """f(x, y) = sin(2x) cos(3y) + x² y, with every derivative below in closed form."""
    return np.sin(2 * p[:, 0]) * np.cos(3 * p[:, 1]) + p[:, 0] ** 2 * p[:, 1]


def _field_derivative(p: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    nx, ny = index.count(0), index.count(1)
    sx = [np.sin(2 * x), 2 * np.cos(2 * x), -4 * np.sin(2 * x), -8 * np.cos(2 * x)][nx]
    cy = [np.cos(3 * y), -3 * np.sin(3 * y), -9 * np.cos(3 * y), 27 * np.sin(3 * y)][ny]
    poly = {(0, 0): x**2 * y, (1, 0): 2 * x * y, (0, 1): x**2, (2, 0): 2 * y, (1, 1): 2 * x, (2, 1): 2.0}
    return sx * cy + poly.get((nx, ny), 0.0)


def test_stencil_jets_are_second_order_inside_and_at_the_faces():
    """Every jet row to third order (mixed ones too), at interior points, on faces and corners:
    the error falls 4x when h halves, and no stencil point leaves the domain."""
    spec = full_spec(2, 3)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (300, 2))
    x[:20, 0], x[20:40, 1], x[40:45] = 0.0, 1.0, [1.0, 0.0]  # faces and a corner: one-sided
    errors = []
    for h in (2e-3, 1e-3):
        x[45:50, 0] = 1.5 * h  # central for u_x, one-sided for u_xxx (which needs 2h)
        stencil = FiniteDifference((h, h), (0.0, 0.0), (1.0, 1.0)).stencil(x, spec)
        assert stencil.points.min() >= 0 and stencil.points.max() <= 1
        jets = stencil.apply(torch.from_numpy(_field(stencil.points))[:, None])[:, :, 0].numpy()
        errors.append([np.abs(jets[:, r] - _field_derivative(x, idx)).max() for r, idx in enumerate(spec.indices)])
    coarse, fine = np.array(errors)
    assert coarse[0] == fine[0] == 0  # the value row is u itself
    ratios = coarse[1:] / fine[1:]
    assert np.all((ratios > 3.5) & (ratios < 4.5)), dict(zip(spec.indices[1:], ratios))


def test_stencil_points_are_shared_between_rows():
    """u, u_x and u_xx of one interior point need 3 points, not 1 + 2 + 3."""
    spec = JetSpec.closure(1, [(0, 0)])
    stencil = FiniteDifference((0.1,), (0.0,), (1.0,)).stencil(np.array([[0.5], [0.0]]), spec)
    assert stencil.points.shape[0] == 3 + 4  # central at 0.5; forward 0, h, 2h, 3h at the face


def _poisson_experiment(step: float = 0.01, **extra):
    data = {
        "problem": {"name": "poisson2d", "params": {"frequencies": [2.0, 4.0]}},
        "decomposition": {"levels": 3},
        "network": {"hidden": [8, 8]},
        "sampling": {"method": "uniform", "n": 200, "test_n": [10, 10]},
        "model": {"derivatives": "fd", "fd_step": step},
        "run": {"dtype": "float64"},
        **extra,
    }
    return build_experiment(load_config(data=data))


def test_model_fd_jets_converge_to_its_exact_jets():
    """The FBPINN (3 levels, hard constraint u = shift + scale·v) on a batch with a stencil gives
    the jets of the batch without one to O(h²): the same points, the same parameters."""
    rng = np.random.default_rng(1)
    groups = {"pde": rng.uniform(0, 1, (200, 2))}
    groups["pde"][:10, 0] = 0.0  # on a face: one-sided there
    exact_exp = _poisson_experiment(model={"derivatives": "jets"})
    model = exact_exp.make_model()
    exact = model(_factory(exact_exp).batch(groups))
    errors = []
    for step in (0.02, 0.01):
        exp = _poisson_experiment(step)
        batch = _factory(exp).batch(groups)
        assert batch.stencil is not None and batch.n_own_rows > batch.n_own
        errors.append((model(batch) - exact).abs().amax(dim=(0, 2)))  # per jet row
    coarse, fine = errors
    assert coarse[0] < 1e-12 and fine[0] < 1e-12
    ratios = coarse[1:] / fine[1:]
    assert torch.all((ratios > 3.5) & (ratios < 4.5)), ratios


def test_value_only_batches_take_the_exact_path():
    """The test set's batches ask for the value only: no stencil, so evaluation is the model itself."""
    exp = _poisson_experiment()
    batch = _factory(exp).test_batch(np.random.default_rng(2).uniform(0, 1, (50, 2)))
    assert batch.stencil is None and batch.n_own_rows == 50


def _factory(exp) -> BatchFactory:
    return BatchFactory(exp, make_layout(exp, 1), LocalComm(), torch.device("cpu"))


def test_p1_trains_with_finite_differences(tmp_path):
    """P1 as in test_training's bound (30 subdomains, 1,000 points, 3,000 Adam steps at lr 3e-3,
    float32) with fd derivatives at the default step (h = 0.01 of a subdomain width): measured
    rel L2 4.7e-3 (exact jets: 4.0e-3, seed 0); the same 1.2e-2 bound as the jets' test."""
    cfg = load_config(
        data={
            "problem": {"name": "cos1d", "params": {"omega": 15}},
            "decomposition": {"levels": [{"subdomains": 30}], "overlap": 1.9},
            "network": {"hidden": [16, 16]},
            "model": {"derivatives": "fd"},
            "optimizer": {"lr": 3e-3},
            "sampling": {"method": "grid", "n": 1000, "test_n": 5000},
            "train": {"steps": 3000, "log_every": 500, "eval_every": 1500, "compile": "off"},
            "run": {"output_dir": str(tmp_path), "name": "p1", "seed": 0, "threads": 1, "plots": False},
        }
    )
    result = run_training(cfg, quiet=True)
    assert result.errors.rel_l2 < 1.2e-2


@pytest.mark.parametrize(
    "model,message",
    [
        ({"derivatives": "fd", "fd_step": 0.0}, "model.fd_step: the finite-difference step h must be in (0, 1)"),
        ({"derivatives": "fd", "fd_step": -1e-3}, "model.fd_step"),
        ({"derivatives": "fd", "fd_step": math.nan}, "model.fd_step"),
        ({"derivatives": "fd", "fd_step": 1.5}, "model.fd_step"),
        ({"derivatives": "autodiff"}, "model.derivatives: 'autodiff' is not one of ['jets', 'fd']"),
    ],
)
def test_bad_finite_difference_settings_are_config_errors(model, message):
    with pytest.raises(ConfigError) as err:
        load_config(data={"problem": {"name": "cos1d"}, "model": model})
    assert message in str(err.value)


def test_a_step_too_long_for_the_domain_is_a_config_error():
    """One level of one subdomain (width 1.9 x the domain): u_xx's one-sided formula needs 3h,
    more than half the domain at fd_step 0.1."""
    with pytest.raises(ConfigError, match=r"model\.fd_step: the one-sided order-2 formula along axis 0"):
        _poisson_experiment(0.1, decomposition={"levels": 1})
