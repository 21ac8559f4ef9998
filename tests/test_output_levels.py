"""``network.output_levels``: an output made of some levels only is the average over those levels
(equal to a model that has only those levels), the other outputs keep every level, the left-out
levels get no gradient from that output, and bad settings name the field."""

from __future__ import annotations

import pytest
import torch

from ddpinn.build import build_experiment
from ddpinn.config import ConfigError, load_config
from ddpinn.geometry import Block

DARCY = {  # two outputs (u, k)
    "problem": {"name": "darcy_inverse", "params": {"n_observations": 50}},
    "network": {"hidden": [8]},
    "sampling": {"n": [9, 9], "test_n": [5, 5]},
    "run": {"dtype": "float64", "threads": 1},
}


def experiment(levels: int, output_levels: dict | None = None):
    network = {**DARCY["network"], **({"output_levels": output_levels} if output_levels is not None else {})}
    return build_experiment(load_config(data={**DARCY, "decomposition": {"levels": levels}, "network": network}))


def values(exp, model=None):
    """u and k with their jets at the training points: [n, J, 2]."""
    from ddpinn.model.batch import build_batch

    groups = exp.training_points(0, Block.whole(exp.decomposition.domain))
    batch = build_batch(exp.problem, exp.decomposition, exp.window, exp.spec, groups, dtype=exp.dtype)
    return (model or exp.make_model())(batch)


def test_an_output_on_the_coarse_levels_equals_a_model_of_those_levels_only():
    masked = experiment(3, {"u": [1, 2]})
    assert masked.output_levels == ((True, True), (True, True), (False, True))
    u_masked = values(masked)
    # levels 1-2 of a 3-level decomposition are a 2-level one's, with the same initial networks
    torch.testing.assert_close(u_masked[..., 0], values(experiment(2))[..., 0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(u_masked[..., 1], values(experiment(3))[..., 1], rtol=1e-13, atol=1e-13)
    assert (u_masked[..., 0] - values(experiment(3))[..., 0]).abs().max() > 1e-3  # level 3 did add to u


def test_left_out_levels_get_no_gradient_from_that_output():
    exp = experiment(3, {"u": [1, 2]})
    model = exp.make_model()
    values(exp, model)[:, 0, 0].square().sum().backward()  # a loss on u only
    grads = [sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None) for net in model.nets]
    assert grads[0] > 0 and grads[1] > 0 and grads[2] == 0


def test_every_level_for_every_output_is_the_plain_model():
    assert experiment(3, {"u": [1, 2, 3], "k": [3, 2, 1]}).output_levels is None
    assert experiment(3).output_levels is None


@pytest.mark.parametrize("output_levels, fragment", [
    ({"v": [1]}, "network.output_levels: 'v' is not an output"),
    ({"u": []}, "network.output_levels.u: [] is not a non-empty list of levels 1..3"),
    ({"u": [0, 1]}, "network.output_levels.u: [0, 1]"),
    ({"k": [4]}, "the decomposition has 3"),
    ({"u": 2}, "network.output_levels.u: 2 is not a non-empty list"),
])
def test_bad_output_levels_name_the_field(output_levels, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        experiment(3, output_levels)
    assert fragment in str(err.value)
