"""The FBPINN forward pass with input-derivative jets (ddpinn.model), in float64.

The reference is a deliberately naive implementation of the model formula,

    u(x) = shift(x) + scale(x) · (1/L) Σ_levels Σ_j ŵ_j(x) · (mean + s · NN_j((x − c_j)/(w_j/2))),

evaluating every subdomain network at every point with plain products (no coverage, no jets),
differentiated by torch.func. Parameters (biases included) are random so that every derivative
is non-trivial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from ddpinn.geometry import Box, CosineWindow, Decomposition, SigmoidWindow, multilevel, uniform_level
from ddpinn.jets import D, JetSpec
from ddpinn.model.activations import Sin, Tanh
from ddpinn.model.batch import build_batch
from ddpinn.model.fbpinn import FBPINN
from ddpinn.problems import HardConstraint, Problem
from ddpinn.problems.base import as_columns
from helpers import autodiff_jets, reference_profile

F64 = torch.float64


# ----------------------------------------------------------------------------- test problems
def _scale(x: torch.Tensor) -> torch.Tensor:
    """A smooth, non-constant ansatz factor with non-zero derivatives of every order: [n]."""
    out = torch.tanh(x[:, 0] + 0.7)
    for a in range(x.shape[1]):
        out = out * (1 + 0.3 * torch.sin(1.3 * x[:, a] + 0.2 * a))
    return out


def _shift(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x @ torch.linspace(0.5, 1.5, x.shape[1], dtype=x.dtype))


def make_problem(inputs, outputs, derivatives, hard: bool, lo: float = -1.0, hi: float = 1.5) -> Problem:
    """A Problem that only declares what the model needs (no residual is evaluated here)."""
    box = Box((lo,) * len(inputs), (hi,) * len(inputs))

    def hard_constraint(self, x):
        if not hard:
            return None
        if len(outputs) == 1:
            return HardConstraint(scale=_scale(x), shift=_shift(x))
        return HardConstraint(
            scale=torch.stack([_scale(x), 1 + x[:, -1] ** 2], dim=1), shift=torch.stack([_shift(x), 0 * x[:, 0]], dim=1)
        )

    attrs = dict(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        derivatives=tuple(D(*d) for d in derivatives),
        domain=lambda self: box,
        hard_constraint=hard_constraint,
    )
    return type("ModelTestProblem", (Problem,), attrs)()


@dataclass
class Case:
    inputs: tuple[str, ...]
    derivatives: list[tuple[str, ...]]
    levels: str  # "uniform:<n per axis>" or "multilevel:<L>"
    hidden: list[list[int]]  # per level
    activation: str = "tanh"
    outputs: tuple[str, ...] = ("u",)
    window: object = field(default_factory=CosineWindow)

    def decomposition(self, box: Box) -> Decomposition:
        kind, n = self.levels.split(":")
        if kind == "multilevel":
            return multilevel(box, int(n), 1.9)
        return Decomposition(box, (uniform_level(box, [int(n)] * box.dim, 1.7),))


CASES = {
    "1d-third-order": Case(("x",), [("u", "x"), ("u", "x", "x"), ("u", "x", "x", "x")], "uniform:6", [[8]]),
    "1d-third-order-deep": Case(("x",), [("u", "x", "x", "x")], "uniform:5", [[8, 8]]),
    "2d-mixed": Case(("x", "y"), [("u", "x", "x"), ("u", "y", "y"), ("u", "x", "y")], "uniform:3", [[8]]),
    "2d-mixed-deep-sin": Case(
        ("x", "y"), [("u", "x", "x"), ("u", "y", "y"), ("u", "x", "y")], "uniform:3", [[8, 8]], activation="sin"
    ),
    "2d-third-mixed-deep": Case(("x", "y"), [("u", "x", "x", "y")], "uniform:2", [[6, 6, 6]]),
    "2d-biharmonic-deep": Case(("x", "y"), [("u", "x", "x", "x", "x"), ("u", "x", "x", "y", "y")], "uniform:2", [[6, 6]]),
    "3d-heat-like": Case(("x", "y", "t"), [("u", "t"), ("u", "x", "x"), ("u", "y", "y")], "uniform:2", [[8, 8]]),
    "2d-multilevel": Case(
        ("x", "y"), [("u", "x", "x"), ("u", "x", "y")], "multilevel:3", [[8], [6, 6], [8, 8]],
        window=SigmoidWindow(core=0.5, edge_value=1e-3),
    ),
    "1d-multilevel-sin": Case(("t",), [("u", "t"), ("u", "t", "t")], "multilevel:4", [[8, 8]] * 4, activation="sin"),
    "2d-two-outputs": Case(
        ("x", "t"), [("u", "x", "x"), ("v", "t"), ("v", "x", "t")], "multilevel:2", [[8, 8], [8, 8]], outputs=("u", "v")
    ),
}


def naive_fbpinn(model: FBPINN, dec: Decomposition, window, problem: Problem, activation: str):
    """u(x): [n, dim] -> [n, n_out], straight from the model formula (every subdomain of a level
    evaluated at every point, windows from their formula, then masked by the window's support)."""
    act = torch.tanh if activation == "tanh" else torch.sin
    mean, s = model.output_mean, model.output_scale

    def u(x):
        acc = 0.0
        for level, net in zip(dec.levels, model.nets):
            centres = torch.as_tensor(level.subdomain_centres(), dtype=F64)  # [S, dim]
            half = torch.as_tensor(level.subdomain_widths(), dtype=F64) / 2
            t = (x[:, None, :] - centres) / half  # [n, S, dim]
            w = torch.ones_like(t[:, :, 0])
            for a in range(x.shape[1]):
                w = w * reference_profile(window, t[:, :, a])
            h = t
            for k, (weight, bias) in enumerate(zip(net.weights, net.biases)):  # weight [S, out, in]
                h = torch.einsum("soi,nsi->nso", weight, h) + bias[:, :, 0]
                if k < len(net.weights) - 1:
                    h = act(h)
            w_hat = w / w.sum(dim=1, keepdim=True)  # [n, S]
            acc = acc + (w_hat[:, :, None] * (mean + s * h)).sum(dim=1)
        v = acc / len(dec.levels)
        hc = problem.hard_constraint(x)
        if hc is None:
            return v
        n_out = v.shape[1]
        return as_columns(hc.shift, x, n_out) + as_columns(hc.scale, x, n_out) * v

    return u


def build(case: Case, hard: bool, seed: int = 0):
    problem = make_problem(case.inputs, case.outputs, case.derivatives, hard)
    dec = case.decomposition(problem.domain())
    dec.validate(problem.inputs)
    n_out = len(case.outputs)
    sizes = [[problem.dim, *hidden, n_out] for hidden in case.hidden]
    model = FBPINN(
        [np.arange(level.n_subdomains) for level in dec.levels],
        sizes,
        Tanh() if case.activation == "tanh" else Sin(),
        output_mean=[0.3, -0.2][:n_out],
        output_scale=[1.7, 0.6][:n_out],
        seed=seed,
        dtype=F64,
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.8)
    return problem, dec, model


def sample(problem: Problem, n: int, seed: int = 0, margin: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    box = problem.domain()
    lo, hi = np.asarray(box.lo) + margin, np.asarray(box.hi) - margin
    x = lo + (hi - lo) * rng.random((n, problem.dim))
    if margin == 0:
        x = np.concatenate([x, np.asarray(box.lo)[None], np.asarray(box.hi)[None]])  # corners too
    return x


@pytest.mark.parametrize("hard", [False, True], ids=["plain", "hard-constraint"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_jets_match_autodiff_of_the_naive_model(name, hard):
    case = CASES[name]
    problem, dec, model = build(case, hard)
    spec = problem.jet_spec()
    x = sample(problem, 60)
    batch = build_batch(problem, dec, case.window, spec, {"pde": x}, dtype=F64)
    got = model(batch)  # [n, J, n_out]
    assert got.shape == (x.shape[0], len(spec), len(case.outputs))
    with torch.no_grad():
        ref = autodiff_jets(naive_fbpinn(model, dec, case.window, problem, case.activation), torch.from_numpy(x), spec)
    scale = ref.abs().amax(dim=0, keepdim=True).clamp_min(1e-300)  # per (row, output)
    err = ((got.detach() - ref).abs() / scale).amax(dim=0)
    assert (err <= 1e-11).all(), dict(zip(spec.describe(problem.inputs), err.tolist()))
    assert (ref.abs().amax(dim=0) > 1e-3).all()  # every row is non-trivial


def test_subdomains_that_cover_no_point_are_skipped_without_changing_the_result():
    """Points in one corner leave most fine-level subdomains without points: the batch drops them
    (``rows`` gathers the parameters of the rest) and the jets still match the naive model."""
    case = CASES["2d-multilevel"]
    problem, dec, model = build(case, hard=True)
    spec = problem.jet_spec()
    rng = np.random.default_rng(11)
    x = -1.0 + 0.4 * rng.random((40, 2))  # the corner [-1, -0.6]^2 of [-1, 1.5]^2
    batch = build_batch(problem, dec, case.window, spec, {"pde": x}, dtype=F64)
    finest = batch.levels[-1]
    assert finest.rows is not None and finest.rows.numel() < dec.levels[-1].n_subdomains
    assert torch.equal(finest.subdomain_ids, finest.rows)  # every subdomain is held here
    got = model(batch).detach()
    with torch.no_grad():
        ref = autodiff_jets(naive_fbpinn(model, dec, case.window, problem, case.activation), torch.from_numpy(x), spec)
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11 * float(ref.abs().max()))


def test_subdomains_split_over_several_rows_give_the_same_jets_and_gradients(monkeypatch):
    """Rows of 7 slots cut every subdomain into several rows sharing one parameter row: the jets
    and the parameter gradients equal those of the one-row-per-subdomain layout."""
    import functools

    import ddpinn.model.batch as batch_module
    from ddpinn.geometry import cover_level

    case = CASES["2d-multilevel"]
    problem, dec, model = build(case, hard=True)
    spec = problem.jet_spec()
    x = sample(problem, 80, seed=2)
    weights = torch.randn(x.shape[0], len(spec), 1, dtype=F64, generator=torch.Generator().manual_seed(4))

    def jets_and_grads(slots):
        monkeypatch.setattr(batch_module, "cover_level", functools.partial(cover_level, slots=slots))
        batch = build_batch(problem, dec, case.window, spec, {"pde": x}, dtype=F64)
        model.zero_grad()
        out = model(batch)
        (out * weights).sum().backward()
        return batch, out.detach(), [p.grad.clone() for p in model.parameters()]

    split_batch, split, split_grads = jets_and_grads(7)
    assert all(cov.rows is not None for cov in split_batch.levels)
    whole_batch, whole, whole_grads = jets_and_grads(x.shape[0])
    assert all(cov.rows is None for cov in whole_batch.levels)
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(split_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", ["1d-third-order-deep", "2d-mixed-deep-sin", "3d-heat-like", "2d-two-outputs"])
def test_first_derivatives_match_central_finite_differences(name):
    """u_a from the jets vs (u(x + h e_a) − u(x − h e_a)) / 2h of the model's own values.

    h = 1e-5: truncation h²/6·|u'''| ≲ 1e-9 for these O(1)-Lipschitz nets on O(1) subdomains,
    round-off ~1e-16/h ~ 1e-11, hence the 1e-7 relative tolerance.
    """
    case = CASES[name]
    problem, dec, model = build(case, hard=True, seed=3)
    h = 1e-5
    x = sample(problem, 80, seed=4, margin=2 * h)
    spec = JetSpec.closure(problem.dim, [(a,) for a in range(problem.dim)])
    value_spec = JetSpec.closure(problem.dim, [])

    def values(y):
        return model(build_batch(problem, dec, case.window, value_spec, {"pde": y}, dtype=F64))[:, 0].detach()

    jets = model(build_batch(problem, dec, case.window, spec, {"pde": x}, dtype=F64)).detach()
    for a in range(problem.dim):
        step = np.zeros(problem.dim)
        step[a] = h
        fd = (values(x + step) - values(x - step)) / (2 * h)
        exact = jets[:, spec.row((a,))]
        assert ((fd - exact).abs() <= 1e-7 * exact.abs().max()).all(), problem.inputs[a]


def test_levels_are_averaged_and_output_mean_passes_through_the_windows():
    """Zero networks give u = shift + scale · mean exactly, derivatives included (partition of unity)."""
    case = CASES["2d-multilevel"]
    problem, dec, model = build(case, hard=True)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    spec = problem.jet_spec()
    x = sample(problem, 50, seed=5)
    got = model(build_batch(problem, dec, case.window, spec, {"pde": x}, dtype=F64)).detach()
    mean = float(model.output_mean[0])
    ref = autodiff_jets(lambda y: (_shift(y) + _scale(y) * mean)[:, None], torch.from_numpy(x), spec)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_initial_weights_depend_only_on_seed_level_and_global_id():
    """A model holding a subset of subdomains gets exactly those rows of the full model's weights."""
    sizes = [[2, 8, 1], [2, 8, 8, 1]]
    full = FBPINN([np.arange(1), np.arange(16)], sizes, Tanh(), output_mean=[0.0], output_scale=[1.0], seed=7)
    part = FBPINN([np.arange(1), np.array([3, 9, 12])], sizes, Tanh(), output_mean=[0.0], output_scale=[1.0], seed=7)
    other = FBPINN([np.arange(1), np.arange(16)], sizes, Tanh(), output_mean=[0.0], output_scale=[1.0], seed=8)
    for tensors in ((full.nets[1].weights, part.nets[1].weights, other.nets[1].weights),
                    (full.nets[1].biases, part.nets[1].biases, other.nets[1].biases)):
        for wf, wp, wo in zip(*tensors):
            assert torch.equal(wp, wf[[3, 9, 12]])
            assert not torch.equal(wo, wf)
    for wf, bf in zip(full.nets[1].weights, full.nets[1].biases):
        bound = 1 / math.sqrt(wf.shape[2])  # LeCun uniform: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        for t in (wf, bf):
            assert t.abs().max().item() <= bound
            assert abs(t.std().item() / (bound / math.sqrt(3)) - 1) < 0.3
    # distinct subdomains and levels do not share weights
    assert not torch.equal(full.nets[1].weights[0][0], full.nets[1].weights[0][1])
    assert not torch.equal(full.nets[0].weights[0][0], full.nets[1].weights[0][0])


# ----------------------------------------------------------------------------- gradients for training
@pytest.mark.parametrize("activation", [Tanh(), Sin()], ids=["tanh", "sin"])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
def test_activation_derivatives_and_their_backward(activation, order):
    """σ^(k) against autograd in one variable, and gradcheck of the (custom) backward."""
    z = torch.linspace(-3, 3, 41, dtype=F64)
    reference = torch.tanh if activation.kind == "tanh" else torch.sin
    zz = z.clone().requires_grad_(True)
    cur, expected = reference(zz), []
    for k in range(order + 1):
        expected.append(cur.detach())
        if k < order:
            (cur,) = torch.autograd.grad(cur.sum(), zz, create_graph=True)
    got = activation.derivatives(z, order)
    assert len(got) == order + 1
    for k, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12 * 10**k, msg=f"order {k}")
    z_small = torch.linspace(-2, 2, 7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tuple(activation.derivatives(t, order)), (z_small,))


@pytest.mark.parametrize("name", ["1d-third-order-deep", "2d-biharmonic-deep", "2d-mixed-deep-sin"])
def test_parameter_gradients_match_central_differences(name):
    """The training step differentiates the jets w.r.t. every parameter (through the custom tanh
    Function's backward, the folded first layer and the Faà di Bruno layers). For a random linear
    functional L of the jets: autograd's dL/dθ vs (L(θ + h) − L(θ − h)) / 2h on sampled entries of
    every parameter tensor; float64, h = 1e-6 (error ~h²·|L'''(θ)| + 1e-16/h, below 1e-8 here).

    (torch.autograd.gradcheck via torch.func.functional_call cannot be used: StackedMLP.jets
    slices its ParameterLists, which re-wraps the swapped-in tensors as new leaves.)
    """
    case = CASES[name]
    small = Case(case.inputs, case.derivatives, "uniform:2", [[4, 3]], case.activation)
    problem, dec, model = build(small, hard=True)
    spec = problem.jet_spec()
    batch = build_batch(problem, dec, small.window, spec, {"pde": sample(problem, 8, seed=6)}, dtype=F64)
    g = torch.Generator().manual_seed(7)
    weights = torch.randn(batch.n_own, len(spec), 1, generator=g, dtype=F64)

    def functional():
        return (model(batch) * weights).sum()

    model.zero_grad()
    functional().backward()
    h = 1e-6
    for pname, p in model.named_parameters():
        flat = p.data.view(-1)
        for i in torch.randperm(p.numel(), generator=g)[:6].tolist():
            keep = flat[i].item()
            with torch.no_grad():
                flat[i] = keep + h
                up = functional().item()
                flat[i] = keep - h
                down = functional().item()
                flat[i] = keep
            fd = (up - down) / (2 * h)
            grad = p.grad.view(-1)[i].item()
            assert abs(fd - grad) <= 1e-6 * (1 + abs(grad)), (pname, i, fd, grad)


def test_functional_call_gives_the_module_gradients():
    case = CASES["1d-third-order-deep"]
    problem, dec, model = build(case, hard=False)
    batch = build_batch(problem, dec, case.window, problem.jet_spec(), {"pde": sample(problem, 5)}, dtype=F64)
    model(batch).sum().backward()
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    torch.func.functional_call(model, params, (batch,)).sum().backward()
    for name, p in model.named_parameters():
        assert params[name].grad is not None, name
        torch.testing.assert_close(params[name].grad, p.grad, msg=name)
