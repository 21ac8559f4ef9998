"""Decompositions, windows and point coverage (ddpinn.geometry), in float64.

The reference for the normalised windows is written here from the formulas of the method
(cosine: Π_d ((1 + cos πt_d)/2)², sigmoid: Π_d σ((t_d + r)/s) σ((r − t_d)/s), both zero for
|t_d| >= 1, then ŵ_j = w_j / Σ_k w_k over the level) and differentiated by torch.func
(forward-mode autodiff, independent of ddpinn's jet code).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ddpinn.geometry import (
    Box,
    CosineWindow,
    CoverageError,
    Decomposition,
    GeometryError,
    Level,
    SigmoidWindow,
    cover_level,
    level_pairs,
    multilevel,
    uniform_level,
)
from ddpinn.geometry.coverage import row_length
from ddpinn.jets import JetSpec
from helpers import autodiff_jets, dense_jets, full_spec, reference_profile

F64 = torch.float64


# ----------------------------------------------------------------------------- layouts
def _irregular_level() -> Level:
    """2-D level with uneven centres and per-subdomain widths (still covering [0,1]²)."""
    cx = np.array([0.0, 0.3, 0.45, 1.0])
    cy = np.array([0.0, 0.6, 1.0])
    wx = np.array([0.7, 0.5, 0.4, 1.2])
    wy = np.array([1.3, 1.0, 0.9])
    return Level((cx, cy), (wx, wy))


LAYOUTS = {
    "1d-uniform": lambda: Decomposition(Box((-1.0,), (2.0,)), (uniform_level(Box((-1.0,), (2.0,)), [7], 1.9),)),
    "1d-multilevel": lambda: multilevel(Box((0.0,), (1.0,)), 4, 1.9),
    "2d-multilevel": lambda: multilevel(Box((0.0, -1.0), (1.0, 1.0)), 3, 1.9),
    "2d-irregular": lambda: Decomposition(Box((0.0, 0.0), (1.0, 1.0)), (_irregular_level(),)),
    "3d-uniform": lambda: Decomposition(
        Box((0.0, 0.0, 0.0), (1.0, 2.0, 0.5)), (uniform_level(Box((0.0, 0.0, 0.0), (1.0, 2.0, 0.5)), [3, 2, 4], 1.5),)
    ),
    "3d-multilevel": lambda: multilevel(Box((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), 2, 1.9),
}
WINDOWS = {"cosine": CosineWindow(), "sigmoid": SigmoidWindow(core=0.4, edge_value=1e-3)}


def domain_points(box: Box, n: int, seed: int = 0, boundary: bool = True) -> torch.Tensor:
    """Random points in ``box`` plus its corners (and the centre): [n + 2^dim + 1, dim], float64."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(box.lo, dtype=F64), torch.tensor(box.hi, dtype=F64)
    x = lo + (hi - lo) * torch.rand(n, box.dim, generator=g, dtype=F64)
    if boundary:
        corners = torch.tensor(list(np.ndindex(*([2] * box.dim))), dtype=F64)
        x = torch.cat([x, lo + (hi - lo) * corners, ((lo + hi) / 2)[None]])
    return x


def reference_windows(level: Level, window, x: torch.Tensor) -> torch.Tensor:
    """ŵ_j(x) for every subdomain j of ``level``: [n, n_subdomains] (differentiable)."""
    centres = torch.as_tensor(level.subdomain_centres(), dtype=F64)  # [S, dim]
    half = torch.as_tensor(level.subdomain_widths(), dtype=F64) / 2
    t = (x[:, None, :] - centres[None]) / half[None]  # [n, S, dim]
    profiles = reference_profile(window, t)
    w = profiles[:, :, 0]
    for a in range(1, level.dim):  # not .prod(): its double backward through zeros is very slow
        w = w * profiles[:, :, a]
    return w / w.sum(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- partition of unity
@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_windows_are_a_partition_of_unity_on_every_level(layout, window):
    dec = LAYOUTS[layout]()
    dec.validate(["x", "y", "t"][: dec.domain.dim])
    spec = full_spec(dec.domain.dim, 2)
    x = domain_points(dec.domain, 300)
    for level in dec.levels:
        cov = cover_level(level, x, WINDOWS[window], spec)
        n = x.shape[0]
        sums = torch.zeros(n + 1, len(spec), dtype=F64)
        for s in range(cov.subdomain_ids.numel()):
            sums.index_add_(0, cov.point_index[s], cov.window[s].T)
        sums = sums[:n]
        # derivative rows scale like (1/half width)^order; compare with the terms being summed
        magnitude = dense_jets(cov, n, level.n_subdomains).abs().amax(dim=(0, 1))
        torch.testing.assert_close(sums[:, 0], torch.ones(n, dtype=F64), rtol=0, atol=1e-13)
        assert (sums[:, 1:].abs() <= 1e-12 * (1 + magnitude[1:])).all()
        assert (cov.window[:, 0] >= 0).all() and (cov.window[:, 0] <= 1 + 1e-15).all()
        # padding slots point at the dummy row and carry nothing
        pad = cov.point_index == n
        assert pad.sum() + cov.n_pairs == cov.point_index.numel()
        assert (cov.window_product.permute(0, 3, 1, 2)[pad] == 0).all()


# ----------------------------------------------------------------------------- jets vs autograd and FD
def jet_scale(level: Level, spec: JetSpec, jets: torch.Tensor) -> torch.Tensor:
    """Per jet row, the size of its entries: max |entry|, but at least (2/min width)^order, the
    natural size of an order-k derivative of a window (a single-subdomain level's are ~0). [J]."""
    natural = torch.tensor([(2 / level.subdomain_widths().min()) ** len(idx) for idx in spec.indices], dtype=F64)
    return torch.maximum(jets.abs().amax(dim=(0, 1)), natural)


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("layout", ["1d-multilevel", "2d-irregular", "3d-uniform"])
def test_window_jets_match_autodiff_of_the_reference(layout, window):
    dec = LAYOUTS[layout]()
    dim = dec.domain.dim
    spec = full_spec(dim, 3 if dim < 3 else 2)
    x = domain_points(dec.domain, 100, seed=1)
    for level in dec.levels:
        cov = cover_level(level, x, WINDOWS[window], spec)
        ref = autodiff_jets(lambda y: reference_windows(level, WINDOWS[window], y), x, spec)  # [n, J, S]
        ref = ref.permute(0, 2, 1)  # [n, S, J]
        got = dense_jets(cov, x.shape[0], level.n_subdomains)
        # every (point, subdomain) pair with a non-zero window is present, and no other
        assert cov.n_pairs == int((ref[:, :, 0] > 0).sum())
        scale = jet_scale(level, spec, ref)
        assert ((got - ref).abs() <= 1e-10 * scale).all(), (got - ref).abs().amax(dim=(0, 1)) / scale


def _away_from_edges(level: Level, x: torch.Tensor, margin: float) -> torch.Tensor:
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    for a in range(level.dim):
        lo, hi = level.axis_bounds(a)
        edges = torch.as_tensor(np.concatenate([lo, hi]), dtype=F64)
        keep &= (x[:, a, None] - edges[None]).abs().amin(dim=1) > margin
    return keep


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("layout", ["1d-uniform", "2d-irregular", "3d-multilevel"])
def test_window_jets_match_central_finite_differences(layout, window):
    """First, second and mixed derivatives vs central differences of the coverage's own values.

    With h = 1e-4 the O(h²) truncation error measured on these layouts is below 7e-6 of the
    row's size (and drops 100x with h/10); round-off is ~1e-16/h² ~ 1e-8.
    """
    dec = LAYOUTS[layout]()
    dim = dec.domain.dim
    spec = full_spec(dim, 2)
    h = 1e-4
    x_all = domain_points(dec.domain, 200, seed=2, boundary=False)
    lo, hi = torch.tensor(dec.domain.lo, dtype=F64), torch.tensor(dec.domain.hi, dtype=F64)
    x_all = x_all[((x_all - lo) > 3 * h).all(1) & ((hi - x_all) > 3 * h).all(1)]  # shifts stay inside
    for level in dec.levels:
        # the sigmoid window is truncated (jumps by ~edge_value) at the edges: no stencil across one
        x = x_all[_away_from_edges(level, x_all, 3 * h)]
        n, n_sub = x.shape[0], level.n_subdomains
        value_spec = JetSpec.closure(dim, [])

        def value(y):
            return dense_jets(cover_level(level, y, WINDOWS[window], value_spec), n, n_sub)[:, :, 0]

        jets = dense_jets(cover_level(level, x, WINDOWS[window], spec), n, n_sub)
        scale = jet_scale(level, spec, jets)
        e = torch.eye(dim, dtype=F64) * h
        centre = value(x)
        plus, minus = [value(x + e[a]) for a in range(dim)], [value(x - e[a]) for a in range(dim)]
        fd = {}
        for a in range(dim):
            fd[(a,)] = (plus[a] - minus[a]) / (2 * h)
            fd[(a, a)] = (plus[a] - 2 * centre + minus[a]) / h**2
            for b in range(a + 1, dim):
                fd[(a, b)] = (
                    value(x + e[a] + e[b]) - value(x + e[a] - e[b]) - value(x - e[a] + e[b]) + value(x - e[a] - e[b])
                ) / (4 * h**2)
        for idx, approx in fd.items():
            r = spec.row(idx)
            assert ((approx - jets[:, :, r]).abs() <= 2e-5 * scale[r]).all(), idx


# ----------------------------------------------------------------------------- pair counts
@pytest.mark.parametrize(
    "n_levels, grid, exact, published",
    [(4, 40, 18_928, 18_900), (5, 80, 98_816, 98_800)],
)
def test_poisson_pair_counts_match_the_reference_table(n_levels, grid, exact, published):
    dec = multilevel(Box((0.0, 0.0), (1.0, 1.0)), n_levels, 1.9)
    assert dec.n_subdomains == sum(4**l for l in range(n_levels))
    g = np.linspace(0.0, 1.0, grid)
    x = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    total = 0
    for level in dec.levels:
        points, ids = level_pairs(level, torch.from_numpy(x))
        lo, hi = level.subdomain_boxes()
        inside = ((x[:, None, :] > lo[None]) & (x[:, None, :] < hi[None])).all(-1)  # brute force
        assert points.numel() == int(inside.sum())
        assert inside[points.numpy(), ids.numpy()].all()
        total += points.numel()
    assert total == exact
    assert abs(total - published) / published < 0.005


# ----------------------------------------------------------------------------- held subsets
def by_subdomain(cov) -> dict[int, dict[str, torch.Tensor]]:
    """A coverage's real (non-padding) slots per subdomain id, its rows concatenated in order:
    the same whatever the row layout (one row per subdomain, or a subdomain split over several)."""
    out: dict[int, dict[str, list]] = {}
    for r, sid in enumerate(cov.subdomain_ids.tolist()):
        real = cov.point_index[r] < cov.n_points
        d = out.setdefault(sid, {"point_index": [], "x_norm": [], "window_product": [], "inv_half_width": []})
        d["point_index"].append(cov.point_index[r, real])
        d["x_norm"].append(cov.x_norm[r][:, real])
        d["window_product"].append(cov.window_product[r][..., real])
        d["inv_half_width"] = [cov.inv_half_width[r]]
    return {sid: {k: torch.cat(v, dim=-1) for k, v in d.items()} for sid, d in out.items()}


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_held_subset_has_the_same_windows_as_the_full_level(window):
    level = multilevel(Box((0.0, 0.0), (1.0, 1.0)), 3, 1.9).levels[2]  # 4x4 subdomains
    spec = full_spec(2, 2)
    x = domain_points(Box((0.0, 0.0), (1.0, 1.0)), 500, seed=3)
    full = by_subdomain(cover_level(level, x, WINDOWS[window], spec))
    held = torch.tensor([11, 0, 5, 6, 15])
    cov = cover_level(level, x, WINDOWS[window], spec, held=held)
    part = by_subdomain(cov)
    assert sorted(part) == sorted(held.tolist())
    assert cov.subdomain_ids.tolist() == sorted(cov.subdomain_ids.tolist())
    for sid, got in part.items():
        for key, value in got.items():
            assert torch.equal(value, full[sid][key]), (sid, key)
    assert cov.n_pairs == sum(d["point_index"].numel() for d in part.values())
    empty = cover_level(level, x, WINDOWS[window], spec, held=torch.tensor([], dtype=torch.int64))
    assert empty.n_pairs == 0 and empty.subdomain_ids.numel() == 0


@pytest.mark.parametrize("slots", [None, 7, 40, 1000])
def test_row_layout_does_not_change_the_windows(slots):
    """Cutting subdomains into rows of any length gives the same per-subdomain windows; rows map
    to parameter rows, and the default length keeps padding low on the Poisson P4 layout."""
    level = multilevel(Box((0.0, 0.0), (1.0, 1.0)), 3, 1.9).levels[2]
    spec = full_spec(2, 1)
    x = domain_points(Box((0.0, 0.0), (1.0, 1.0)), 400, seed=8)
    one_row_each = cover_level(level, x, CosineWindow(), spec, slots=x.shape[0])
    assert one_row_each.rows is None and one_row_each.subdomain_ids.tolist() == list(range(16))
    cov = cover_level(level, x, CosineWindow(), spec, slots=slots)
    reference, got = by_subdomain(one_row_each), by_subdomain(cov)
    assert sorted(got) == sorted(reference)
    for sid in reference:
        for key in reference[sid]:
            assert torch.equal(got[sid][key], reference[sid][key]), (sid, key)
    if slots is not None and slots < 40:
        assert cov.rows is not None and torch.equal(cov.subdomain_ids, cov.rows)  # every subdomain held
        assert cov.slots == slots
        assert cov.subdomain_ids.numel() > 16


def test_default_rows_keep_padding_low_on_the_poisson_layout():
    """Interior subdomains cover several times the points of corner ones; one row each would pad
    P4's 80x80 grid to 1.27x its pairs (levels 3 and 4: 1.73x, 1.34x)."""
    dec = multilevel(Box((0.0, 0.0), (1.0, 1.0)), 5, 1.9)
    g = torch.linspace(0, 1, 80, dtype=torch.float64)
    x = torch.cartesian_prod(g, g)
    spec = JetSpec.closure(2, [])
    slots_total = pairs = 0
    for level in dec.levels:
        cov = cover_level(level, x, CosineWindow(), spec)
        slots_total += cov.subdomain_ids.numel() * cov.slots
        pairs += cov.n_pairs
    assert pairs == 98816
    assert slots_total <= 1.08 * pairs


def test_row_length_balances_padding_against_short_rows():
    assert row_length(torch.tensor([100, 100, 100])) == 100
    assert row_length(torch.tensor([0, 0])) == 1
    # two full subdomains and many quarter-full ones: quarter rows waste nothing
    assert row_length(torch.tensor([400, 400] + [100] * 30)) == 100
    # tiny counts are not cut further
    assert row_length(torch.tensor([3, 5, 4])) == 5


def test_x_norm_and_inverse_half_width_follow_the_subdomain_box():
    level = _irregular_level()
    x = domain_points(Box((0.0, 0.0), (1.0, 1.0)), 100, seed=4)
    cov = cover_level(level, x, CosineWindow(), JetSpec.closure(2, []))
    centres = torch.as_tensor(level.subdomain_centres())
    widths = torch.as_tensor(level.subdomain_widths())
    torch.testing.assert_close(cov.inv_half_width, 2 / widths[cov.subdomain_ids])
    for r, s in enumerate(cov.subdomain_ids.tolist()):
        real = cov.point_index[r] < x.shape[0]
        expected = (x[cov.point_index[r][real]] - centres[s]) / (widths[s] / 2)
        torch.testing.assert_close(cov.x_norm[r][:, real].T, expected, rtol=0, atol=1e-15)
        assert (expected.abs() < 1).all()


# ----------------------------------------------------------------------------- gaps and outside points
@pytest.mark.parametrize(
    "level, fragments",
    [
        (uniform_level(Box((0.0, 0.0), (1.0, 1.0)), [3, 5], 0.9), ["gap in x between", "overlap"]),
        (Level((np.array([0.5]), np.array([0.0, 0.5, 1.0])), (1.2, 0.5)), ["gap in y between 0.25 and 0.25", "overlap"]),
        (Level((np.array([0.5]), np.array([0.35, 0.8])), (1.2, 0.6)), ["no subdomain covers y = 0", "widen"]),
        (Level((np.array([0.0, 0.45]), np.array([0.5])), (1.0, 1.2)), ["no subdomain covers x = 1", "coverage ends at 0.95"]),
    ],
    ids=["interior-gap", "touching", "low-edge", "high-edge"],
)
def test_check_covers_names_the_gap(level, fragments):
    with pytest.raises(GeometryError) as err:
        level.check_covers(Box((0.0, 0.0), (1.0, 1.0)), "decomposition.levels[1]", ["x", "y"])
    message = str(err.value)
    assert message.startswith("decomposition.levels[1]: ")
    for fragment in fragments:
        assert fragment in message


def test_a_gap_outside_the_domain_is_not_reported():
    level = Level((np.array([-2.5, 0.5]),), (np.array([1.0, 3.0]),))  # [-3, -2] and [-1, 2] on [0, 1]
    level.check_covers(Box((0.0,), (1.0,)), "decomposition.levels[0]", ["x"])


def test_multilevel_layout_follows_the_paper():
    dec = multilevel(Box((0.0, -2.0), (1.0, 2.0)), 3, 1.9)
    assert [lv.shape for lv in dec.levels] == [(1, 1), (2, 2), (4, 4)]
    coarse = dec.levels[0]
    np.testing.assert_allclose(coarse.subdomain_centres(), [[0.5, 0.0]])
    np.testing.assert_allclose(coarse.subdomain_widths(), [[1.9, 7.6]])
    fine = dec.levels[2]
    np.testing.assert_allclose(fine.centres[1], np.linspace(-2, 2, 4))
    np.testing.assert_allclose(fine.widths[1], 1.9 * 4 / 3)
    dec.validate(["x", "y"])


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_point_outside_the_domain_is_a_coverage_error(dim):
    box = Box((0.0,) * dim, (1.0,) * dim)
    level = multilevel(box, 2, 1.9).levels[1]
    x = domain_points(box, 20)
    cover_level(level, x, CosineWindow(), JetSpec.closure(dim, []))  # inside: fine
    outside = torch.full((1, dim), 0.5, dtype=F64)
    outside[0, -1] = 1.96  # the level-2 boxes reach 1 + 1.9/2 = 1.95
    with pytest.raises(CoverageError, match=r"decomposition.levels\[1\]: point \[.*1\.96\] lies in no subdomain"):
        cover_level(level, torch.cat([x, outside]), CosineWindow(), JetSpec.closure(dim, []), where="decomposition.levels[1]")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Box((0.0, 1.0), (1.0, 1.0)), "Box axis 1: hi (1.0) must exceed lo (1.0)"),
        (lambda: Level((np.array([0.0, 1.0]),), (np.array([1.0, -0.5]),)), "axis 0: widths must be positive"),
        (lambda: Level((np.array([]),), (1.0,)), "axis 0 has no subdomains"),
        (lambda: Decomposition(Box((0.0,), (1.0,)), ()), "need at least one level"),
        (
            lambda: Decomposition(Box((0.0,), (1.0,)), (uniform_level(Box((0.0, 0.0), (1.0, 1.0)), [2, 2], 1.9),)),
            "has 2 axes but the domain has 1",
        ),
    ],
)
def test_invalid_geometry_is_rejected(build, message):
    with pytest.raises(GeometryError, match=re.escape(message)):
        build()



@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_a_single_subdomain_axis_covers_the_domain_with_window_one(width):
    """One subdomain along an axis (a PINN, or the coarse level) covers the whole axis whatever its
    width, with window 1: a box exactly the domain's size must not give 0/0 on the boundary."""
    box = Box((0.0, 0.0), (1.0, 1.0))
    level = Level((np.array([0.5]), np.array([0.5])), (width, width))
    level.check_covers(box, "level", ["x", "y"])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.3, 0.9], [1.0, 0.0]], dtype=torch.float64)
    spec = JetSpec.closure(2, [(0, 0), (0, 1)])
    cov = cover_level(level, x, CosineWindow(), spec)
    assert cov.n_pairs == 4
    torch.testing.assert_close(cov.window[0, 0], torch.ones(4, dtype=torch.float64))
    assert (cov.window[0, 1:] == 0).all()


def test_cosine_window_keeps_relative_precision_near_the_edge():
    t = torch.tensor([1 - 2.3e-6, -(1 - 1e-4)], dtype=torch.float64)
    value = CosineWindow().profile(t, 0)[0]
    expected = torch.cos(torch.pi * t / 2) ** 4
    assert (value > 0).all()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
