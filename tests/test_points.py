"""Point sources: the rank-count-free weighted draw, RAD and RAR-D on a known residual, and
restoring a point set (with its per-point state) from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from ddpinn.build import build_experiment
from ddpinn.config import ConfigError, load_config
from ddpinn.geometry import Block
from ddpinn.parallel.comm import LocalComm
from ddpinn.points import SourceContext, make_point_source
from ddpinn.points.draw import point_uniforms, sampling_keys, select_top


def _experiment(tmp_path, **sampling):
    return build_experiment(load_config(data={
        "problem": {"name": "cos1d", "params": {"omega": 15}},
        "decomposition": {"levels": [{"subdomains": 6}]},
        "sampling": {"method": "uniform", "n": 400, **sampling},
        "train": {"steps": 100},
        "run": {"output_dir": str(tmp_path)},
    }))


def _source(exp, block=None):
    dom = exp.decomposition.domain
    block = block or Block(tuple(dom.lo), tuple(dom.hi), (True,) * dom.dim)
    return make_point_source(SourceContext(exp, block, LocalComm()))


def _peaked(x: np.ndarray) -> np.ndarray:
    """A residual concentrated around x = 1 (width 0.2 on a domain of length 4π)."""
    return 1e3 * np.exp(-(((x[:, 0] - 1.0) / 0.2) ** 2))


# ----------------------------------------------------------------------------- the draw
@pytest.mark.parametrize("k", [1, 17, 500, 999])
def test_select_top_picks_exactly_the_k_largest(k):
    values = np.random.default_rng(3).normal(size=1000)
    values[::7] = -np.inf  # weight-zero points are never picked while others remain
    mask = select_top(values, k, LocalComm())
    assert mask.sum() == min(k, np.isfinite(values).sum())
    left = values[np.isfinite(values) & ~mask]
    if left.size:
        assert values[mask].min() > left.max()


def test_point_uniforms_depend_on_the_point_not_its_position_in_the_array():
    x = np.random.default_rng(0).uniform(size=(300, 2))
    u = point_uniforms(11, x)
    order = np.random.default_rng(1).permutation(300)
    np.testing.assert_array_equal(point_uniforms(11, x[order]), u[order])
    assert 0 < u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.05
    assert not np.array_equal(point_uniforms(12, x), u)  # another event, other draws


def test_weighted_keys_draw_in_proportion_to_the_weights():
    """One draw of k out of n with weights 1 and 9: the heavy half gets ~9/10 of a small sample."""
    x = np.arange(20000, dtype=np.float64)[:, None]
    weights = np.where(x[:, 0] < 10000, 1.0, 9.0)
    chosen = select_top(sampling_keys(weights, point_uniforms(5, x)), 1000, LocalComm())
    share = (x[chosen, 0] >= 10000).mean()
    assert 0.87 < share < 0.93


# ----------------------------------------------------------------------------- the sources
def test_rad_moves_the_points_to_where_the_residual_is(tmp_path):
    exp = _experiment(tmp_path, adaptive={"method": "rad", "every": 10, "exponent": 1.0, "offset": 0.1})
    source = _source(exp)
    start = source.initial()
    assert source.due(10) and not source.due(5) and not source.due(0)
    new = source.refresh(10, start, lambda groups: {"pde": _peaked(groups["pde"])})
    x = new.groups["pde"][:, 0]
    assert len(x) == 400 == exp.collocation_count
    near = np.abs(x - 1.0) < 0.4
    assert near.mean() > 0.5 and (np.abs(start.groups["pde"][:, 0] - 1.0) < 0.4).mean() < 0.15  # ~6% before
    assert len(np.unique(x)) == len(x)  # without replacement
    assert (new.kept_from("pde") == -1).all()


def test_rad_with_exponent_zero_is_uniform_resampling(tmp_path):
    exp = _experiment(tmp_path, adaptive={"method": "rad", "every": 10, "exponent": 0.0, "offset": 1.0})
    source = _source(exp)
    new = source.refresh(10, source.initial(), lambda groups: {"pde": _peaked(groups["pde"])})
    near = (np.abs(new.groups["pde"][:, 0] - 1.0) < 0.4).mean()
    assert near < 0.15  # 0.8 / 4π ≈ 6% of a uniform sample


def test_rar_d_adds_points_up_to_its_cap_and_keeps_the_old_ones(tmp_path):
    exp = _experiment(tmp_path, adaptive={"method": "rar_d", "every": 10, "add": 150, "max_points": 700})
    source = _source(exp)
    points = source.initial()
    sizes = []
    for step in (10, 20, 30):
        new = source.refresh(step, points, lambda groups: {"pde": _peaked(groups["pde"])})
        np.testing.assert_array_equal(new.groups["pde"][: len(points.groups["pde"])], points.groups["pde"])
        kept = new.kept_from("pde")
        assert (kept[: len(points.groups["pde"])] == np.arange(len(points.groups["pde"]))).all()
        points = new
        sizes.append(len(points.groups["pde"]))
    assert sizes == [550, 700, 700]
    added = points.groups["pde"][400:, 0]
    assert (np.abs(added - 1.0) < 0.4).mean() > 0.3  # uniform: ~6%


def test_points_split_by_blocks_are_the_points_of_the_whole_domain(tmp_path):
    """Two blocks drawing RAD points separately get, together, the one-block draw (LocalComm sums
    over one block only, so the density mean and the top-k are taken per block here: the test
    uses exponent 0, where both are block-independent, to check the candidate union)."""
    exp = _experiment(tmp_path, adaptive={"method": "rad", "every": 10, "exponent": 0.0, "offset": 1.0})
    whole = _source(exp).candidates(3)
    cut = exp.decomposition.domain.lo[0] + 0.5 * exp.decomposition.domain.lengths[0]
    dom = exp.decomposition.domain
    left = _source(exp, Block((dom.lo[0],), (cut,), (False,))).candidates(3)
    right = _source(exp, Block((cut,), (dom.hi[0],), (True,))).candidates(3)
    np.testing.assert_array_equal(np.sort(np.concatenate([left, right])[:, 0]), np.sort(whole[:, 0]))


def test_restore_redraws_what_it_can_and_maps_stored_rows(tmp_path):
    exp = _experiment(tmp_path, resample_every=10)
    source = _source(exp)
    at_25 = source.refresh(20, source.initial(), None)
    shuffled = {k: v[::-1] for k, v in at_25.groups.items()}
    restored, note = source.restore(25, shuffled)
    assert note is None
    for name, x in restored.groups.items():
        np.testing.assert_array_equal(shuffled[name][restored.origin[name]], x)
    # the sampling changed since the checkpoint: new points, fresh per-point state, and a note
    # (fewer points per cell would be a subset of these: each cell's draws are a counter sequence)
    other = _source(_experiment(tmp_path, resample_every=10, n=500))
    restored, note = other.restore(25, shuffled)
    assert "differ from the checkpoint" in note and (restored.origin["pde"] == -1).sum() == 100


def test_rad_restore_reads_the_collocation_points_back(tmp_path):
    exp = _experiment(tmp_path, adaptive={"method": "rad", "every": 10})
    source = _source(exp)
    drawn = source.refresh(10, source.initial(), lambda g: {"pde": _peaked(g["pde"])})
    restored, note = source.restore(15, drawn.groups)
    assert note is None
    np.testing.assert_array_equal(restored.groups["pde"], drawn.groups["pde"])


@pytest.mark.parametrize(
    ("adaptive", "extra", "field"),
    [
        ({"method": "rad", "candidate_factor": 0.5}, {}, "sampling.adaptive.candidate_factor"),
        ({"method": "rad", "exponent": -1}, {}, "sampling.adaptive.exponent"),
        ({"method": "rad", "offset": -0.1}, {}, "sampling.adaptive.offset"),
        ({"method": "rad", "every": 0}, {}, "sampling.adaptive.every"),
        ({"method": "rar_d", "add": 0}, {}, "sampling.adaptive.add"),
        ({"method": "rad"}, {"resample_every": 5}, "sampling.resample_every"),
        ({"method": "rad"}, {"method": "grid"}, "sampling.method"),
        ({"method": "radd"}, {}, "sampling.adaptive.method"),
    ],
)
def test_bad_adaptive_settings_are_config_errors_naming_the_field(adaptive, extra, field):
    sampling = {"method": "uniform", "adaptive": adaptive, **extra}
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        load_config(data={"problem": {"name": "cos1d"}, "sampling": sampling})


def test_random_r_keeps_the_rows_of_points_that_stay(tmp_path):
    """A point constraint (u(0) = 1 of the soft oscillator) is the same point at every draw: its
    per-point state must survive resampling; the redrawn collocation points are new."""
    exp = build_experiment(load_config(data={
        "problem": {"name": "harmonic", "params": {"constraint": "soft"}},
        "sampling": {"method": "uniform", "n": 100, "resample_every": 5},
        "run": {"output_dir": str(tmp_path)},
    }))
    source = _source(exp)
    new = source.refresh(5, source.initial(), None)
    assert (new.kept_from("u(0)=1") == 0).all() and (new.kept_from("pde") == -1).all()
