"""Jet algebra (ddpinn.jets): spec closure, Leibniz product and Faà di Bruno composition,
checked against nested autograd on random smooth functions (float64)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ddpinn.jets import D, JetSpec, pointwise_jets
from helpers import full_spec

torch_f64 = dict(dtype=torch.float64)


# ----------------------------------------------------------------------------- closure
@pytest.mark.parametrize(
    "dim, requested, expected",
    [
        (1, [(0, 0, 0)], [(), (0,), (0, 0), (0, 0, 0)]),
        (2, [(1, 0)], [(), (0,), (1,), (0, 1)]),
        (2, [(0, 0), (1, 1)], [(), (0,), (1,), (0, 0), (1, 1)]),
        (3, [(2,), (0, 0), (1, 1)], [(), (0,), (1,), (2,), (0, 0), (1, 1)]),
        (2, [(0, 1, 1)], [(), (0,), (1,), (0, 1), (1, 1), (0, 1, 1)]),
        (3, [], [()]),
    ],
)
def test_closure_is_the_smallest_sorted_closed_set(dim, requested, expected):
    spec = JetSpec.closure(dim, requested)
    assert list(spec.indices) == expected
    assert spec.max_order == len(expected[-1])
    for order in range(spec.max_order + 1):
        rows = spec.indices[spec.order_slice(order)]
        assert rows and all(len(idx) == order for idx in rows)
    for r, idx in enumerate(spec.indices):
        assert spec.row(tuple(reversed(idx))) == r  # any axis order names the same row
        assert idx in spec


def test_closure_of_full_third_order_3d_has_all_twenty_indices():
    spec = full_spec(3, 3)
    assert len(spec) == 1 + 3 + 6 + 10
    assert spec.describe(("x", "y", "t"))[:5] == ["u", "u_x", "u_y", "u_t", "u_xx"]


@pytest.mark.parametrize(
    "dim, indices, message",
    [
        (1, ((0,),), "first multi-index must be ()"),
        (2, ((), (0, 1)), "not closed: (0, 1) needs ("),
        (2, ((), (2,)), "bad multi-index (2,) for dim 2"),
        (2, ((), (0,), (1,), (1, 0)), "bad multi-index (1, 0)"),
    ],
)
def test_invalid_specs_are_rejected(dim, indices, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        JetSpec(dim, indices)


def test_named_derivatives():
    assert D("u").name == "u"
    assert D("u", "x", "y").name == "u_xy"
    assert D("v", "y", "x").multi_index(("x", "y")) == (0, 1)
    with pytest.raises(KeyError, match="'u_z' uses input 'z'"):
        D("u", "z").multi_index(("x", "y"))


# ----------------------------------------------------------------------------- products and chains
def random_smooth(dim: int, seed: int):
    """A random smooth scalar function of x: [n, dim] -> [n] with non-trivial mixed derivatives."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, dim, generator=g, **torch_f64)
    b = torch.randn(3, generator=g, **torch_f64)

    def fn(x):
        z = x @ a.T + b  # [n, 3]
        return torch.sin(z[:, 0]) * torch.exp(0.3 * z[:, 1]) + z[:, 2] ** 3 / 5 + z[:, 0] * z[:, 2]

    return fn


def derivatives_1d(f, z0: torch.Tensor, order: int) -> list[torch.Tensor]:
    """[f(z0), f'(z0), ..., f^(order)(z0)] by nested autograd in one variable (independent of ddpinn)."""
    z = z0.detach().clone().requires_grad_(True)
    out, cur = [], f(z)
    for k in range(order + 1):
        out.append(cur.detach())
        if k < order:
            (cur,) = torch.autograd.grad(cur.sum(), z, create_graph=True)
    return out


SPECS = [
    pytest.param(1, full_spec(1, 3), id="1d-order3"),
    pytest.param(2, full_spec(2, 3), id="2d-order3"),
    pytest.param(3, full_spec(3, 3), id="3d-order3"),
    pytest.param(2, full_spec(2, 4), id="2d-order4"),
    pytest.param(2, JetSpec.closure(2, [(0, 1, 1), (0, 0)]), id="2d-partial"),
    pytest.param(3, JetSpec.closure(3, [(0, 1, 2), (2, 2)]), id="3d-partial"),
]


@pytest.mark.parametrize("dim, spec", SPECS)
def test_mul_is_the_leibniz_rule(dim, spec):
    x = torch.rand(40, dim, **torch_f64) * 2 - 1
    f, g = random_smooth(dim, 1), random_smooth(dim, 2)
    jf, jg = pointwise_jets(f, x, spec), pointwise_jets(g, x, spec)  # [n, J, 1]
    expected = pointwise_jets(lambda y: f(y) * g(y), x, spec)
    got = spec.mul(jf, jg, axis=1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max().item())
    # a negative axis and broadcasting over a leading axis give the same rows
    got_b = spec.mul(jf[None].expand(2, -1, -1, -1), jg, axis=-2)
    torch.testing.assert_close(got_b[1], expected, rtol=1e-12, atol=1e-12 * expected.abs().max().item())


OUTER = {
    "tanh": torch.tanh,
    "exp": torch.exp,
    "reciprocal": lambda z: 1 / (2 + z),
}


@pytest.mark.parametrize("outer", sorted(OUTER))
@pytest.mark.parametrize("dim, spec", SPECS)
def test_compose_is_the_faa_di_bruno_rule(dim, spec, outer):
    h = OUTER[outer]
    x = torch.rand(40, dim, **torch_f64) * 2 - 1
    f = random_smooth(dim, 3)
    if outer == "reciprocal":  # keep 2 + f away from zero
        f0 = f
        f = lambda y: torch.tanh(f0(y))  # noqa: E731
    jf = pointwise_jets(f, x, spec)[:, :, 0]  # [n, J]
    derivs = derivatives_1d(h, jf[:, 0], spec.max_order)
    got = spec.compose(derivs, jf, axis=1)
    expected = pointwise_jets(lambda y: h(f(y)), x, spec)[:, :, 0]
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-11 * expected.abs().max().item())


def test_pointwise_jets_of_a_polynomial_are_exact():
    spec = full_spec(2, 3)
    x = torch.tensor([[0.5, -2.0], [1.5, 3.0]], **torch_f64)
    jets = pointwise_jets(lambda y: y[:, 0] ** 2 * y[:, 1] ** 3, x, spec)[:, :, 0]
    x0, x1 = x[:, 0], x[:, 1]
    expected = {
        (): x0**2 * x1**3,
        (0,): 2 * x0 * x1**3,
        (1,): 3 * x0**2 * x1**2,
        (0, 0): 2 * x1**3,
        (0, 1): 6 * x0 * x1**2,
        (1, 1): 6 * x0**2 * x1,
        (0, 0, 0): 0 * x0,
        (0, 0, 1): 6 * x1**2,
        (0, 1, 1): 12 * x0 * x1,
        (1, 1, 1): 6 * x0**2,
    }
    for idx, value in expected.items():
        torch.testing.assert_close(jets[:, spec.row(idx)], value, rtol=1e-14, atol=1e-14)


def test_leibniz_coefficients_are_binomial():
    """d³(fg)/dx²dy has 6 terms with coefficients C(2,i)·C(1,j); row () has the single term f·g."""
    spec = JetSpec.closure(2, [(0, 0, 1)])
    terms = spec.leibniz[spec.row((0, 0, 1))]
    assert sorted(t.coef for t in terms) == [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert sum(t.coef for t in terms) == 2**3
    # Faà di Bruno: the number of set partitions of 3 derivative slots is Bell(3) = 5
    assert sum(t.coef for t in spec.chain[spec.row((0, 0, 1))]) == 5
    assert math.isclose(sum(t.coef for t in spec.chain[spec.row((0, 0))]), 2)
