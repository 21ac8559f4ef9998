"""Loss weighting strategies (ddpinn.train.weighting) on tiny in-process set-ups, no trainer.

The residuals are given, not computed by a model: each test feeds the squared residuals a step
would see and drives the hooks in the trainer's order (weights, terms, backward, after_backward,
after_sync). Several ranks are threads of this process (:class:`ThreadRanks`).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpinn.build import Experiment, build_experiment
from ddpinn.config import ConfigError, load_config
from ddpinn.model.batch import EvaluationBatch, build_batch
from ddpinn.parallel.comm import Communicator, LocalComm
from ddpinn.points import PointSet
from ddpinn.train.objective import Objective
from ddpinn.train.weighting import LossWeighting, WeightingContext, make_weighting
from ddpinn.train.weighting.balanced import BalancedWeights
from ddpinn.train.weighting.base import ProductWeighting
from ddpinn.train.weighting.causal import CausalWeights
from ddpinn.train.weighting.self_adaptive import SelfAdaptiveWeights

DTYPE = torch.float64

# P3 (damped harmonic oscillator, input t in [0, 1]) with two soft constraints: pde, u(0)=1, u'(0)=0.
HARMONIC = {
    "problem": {"name": "harmonic", "params": {"d": 2, "w0": 80, "constraint": "soft"}},
    "decomposition": {"levels": [{"subdomains": [4], "widths": [0.5]}]},
    "network": {"hidden": [4]},
    "sampling": {"method": "grid", "n": 12, "test_n": 20},
    "train": {"steps": 10, "compile": "off"},
}


class ThreadRanks(Communicator):
    """Rank ``rank`` of ``world_size`` threads: :meth:`all_reduce_sum` sums over the threads."""

    def __init__(self, rank: int, world_size: int, shared: dict) -> None:
        self.rank, self.world_size, self.shared = rank, world_size, shared

    def all_reduce_sum(self, tensor):
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = tensor.clone()
        barrier.wait()
        total = sum(slots[1:], slots[0].clone())
        barrier.wait()  # nobody overwrites a slot before everyone has summed
        return total

    def exchange(self, sends, recv_shapes, dtype):
        raise NotImplementedError

    def allgather_object(self, obj):
        raise NotImplementedError


def on_ranks(world_size: int, fn):
    """``fn(comm)`` on ``world_size`` thread ranks; their results in rank order."""
    shared = {"slots": [None] * world_size, "barrier": threading.Barrier(world_size, timeout=30)}
    with ThreadPoolExecutor(world_size) as pool:
        return list(pool.map(lambda r: fn(ThreadRanks(r, world_size, shared)), range(world_size)))


@dataclass
class Case:
    """A config's experiment, its loss terms and the weighting context on one rank."""

    exp: Experiment
    objective: Objective
    ctx: WeightingContext

    def batch(self, groups: dict[str, np.ndarray], global_counts: dict[str, int] | None = None) -> EvaluationBatch:
        exp = self.exp
        return build_batch(exp.problem, exp.decomposition, exp.window, exp.spec, groups, dtype=DTYPE,
                           global_counts=global_counts)


def case(loss: dict | None = None, base: dict = HARMONIC, comm: Communicator | None = None) -> Case:
    """``base`` with the ``loss`` section."""
    exp = build_experiment(load_config(data={**base, "loss": loss or {}}))
    objective = Objective(exp.problem, exp.spec)
    ctx = WeightingContext(
        names=objective.names, base=objective.base_weights(), exp=exp, comm=comm or LocalComm(),
        device=torch.device("cpu"), dtype=DTYPE,
    )
    return Case(exp, objective, ctx)


def step(weighting, objective, batch, squared: dict[str, torch.Tensor], s: int) -> torch.Tensor:
    """One training step's weighting hooks on given squared residuals; returns the diagnostics."""
    terms = objective.terms(squared, weighting.weights(), batch)
    diagnostics = weighting.diagnostics(squared, batch).detach()
    terms.sum().backward()
    weighting.after_backward(s)
    weighting.after_sync(s, diagnostics)
    return diagnostics


def random_squared(points: PointSet, seed: int) -> dict[str, torch.Tensor]:
    """Squared residuals in [0, 1) at every point: name -> [n]."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(len(x), generator=gen, dtype=DTYPE) for name, x in points.groups.items()}


# ---------------------------------------------------------------------------------- self-adaptive
@dataclass
class Started:
    """A weighting that has seen its first point set."""

    case: Case
    weighting: LossWeighting
    points: PointSet
    batch: EvaluationBatch

    def step(self, squared: dict[str, torch.Tensor], s: int) -> torch.Tensor:
        return step(self.weighting, self.case.objective, self.batch, squared, s)

    def lambdas(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.case.objective.names, self.weighting.parameters()))


def started_sa(mask: str = "square", lr: float = 0.01, init: float = 1.0) -> Started:
    c = case({"weighting": "self_adaptive", "self_adaptive": {"mask": mask, "lr": lr, "init": init}})
    points = PointSet(c.exp.training_points())
    batch = c.batch(points.groups)
    weighting = make_weighting(c.ctx)
    weighting.on_points(points, batch)
    return Started(c, weighting, points, batch)


def test_self_adaptive_ascent_raises_lambda_where_the_residual_is_not_zero():
    run = started_sa(lr=0.01)
    assert isinstance(run.weighting, SelfAdaptiveWeights)
    squared = {name: torch.zeros(len(x), dtype=DTYPE) for name, x in run.points.groups.items()}
    squared["pde"][::2] = torch.linspace(0.5, 3.0, len(squared["pde"][::2]), dtype=DTYPE)
    squared["u(0)=1"][:] = 1e-3
    before = {name: lam.detach().clone() for name, lam in run.lambdas().items()}
    run.step(squared, 0)
    for name, lam in run.lambdas().items():
        # Adam's first step moves every λ with a positive gradient by exactly +lr (ascent), others not at all.
        torch.testing.assert_close(lam.detach(), before[name] + 0.01 * (squared[name] > 0).to(DTYPE))
        assert lam.grad is None
    assert run.weighting.ascent_steps == 1


@pytest.mark.parametrize("mask, fn", [("square", torch.square), ("softplus", F.softplus), ("identity", lambda v: v)])
def test_self_adaptive_mask_and_its_gradient(mask, fn):
    run = started_sa(mask=mask, init=0.7)
    assert all(torch.all(lam == 0.7) for lam in run.lambdas().values())
    squared = random_squared(run.points, seed=1)
    weights = run.weighting.weights()
    for name, lam in run.lambdas().items():
        torch.testing.assert_close(weights[name], fn(lam.detach()))
    run.case.objective.terms(squared, weights, run.batch).sum().backward()
    for name, lam in run.lambdas().items():
        x = lam.detach().clone().requires_grad_()
        (derivative,) = torch.autograd.grad(fn(x).sum(), x)
        torch.testing.assert_close(lam.grad, derivative * squared[name] / run.batch.global_counts[name])


def test_self_adaptive_state_follows_kept_points():
    """Kept points continue exactly as without the new point set; new points start afresh."""
    moved, still = started_sa(), started_sa()
    points = moved.points
    for s in range(3):
        squared = random_squared(points, seed=s)
        moved.step(squared, s)
        still.step(squared, s)

    n = len(points.groups["pde"])
    origin = {"pde": np.array([5, -1, 0, n - 1, -1, 2]), "u(0)=1": np.arange(len(points.groups["u(0)=1"]))}
    groups = {name: x[origin[name]] if name in origin else x for name, x in points.groups.items()}
    groups["pde"][origin["pde"] < 0] = [[0.123], [0.456]]
    moved.points = PointSet(groups, origin)  # u'(0)=0 has no origin: all its points are new
    moved.batch = moved.case.batch(groups)
    moved.weighting.on_points(moved.points, moved.batch)

    lam = moved.lambdas()
    assert torch.all(lam["pde"][[1, 4]] == 1.0) and torch.all(lam["u'(0)=0"] == 1.0)
    state = moved.weighting.point_state()
    assert np.all(state["pde"]["sa_adam_m"][[1, 4]] == 0) and np.all(state["u'(0)=0"]["sa_adam_v"] == 0)

    # One more step, each kept point with its own residual (new points: any) ...
    old_squared = random_squared(points, seed=3)
    new_squared = {name: old_squared[name][origin[name]] if name in origin else torch.ones(len(x), dtype=DTYPE)
                   for name, x in groups.items()}
    new_squared["pde"][origin["pde"] < 0] = 1.0
    moved.step(new_squared, 3)
    # ... and the same global counts, so that kept points see the same gradient.
    still.batch = still.case.batch(points.groups, moved.batch.global_counts)
    still.step(old_squared, 3)
    lam, ref = moved.lambdas(), still.lambdas()
    for name, rows in origin.items():
        kept = rows >= 0
        torch.testing.assert_close(lam[name][kept], ref[name][rows[kept]], rtol=0, atol=0)
    assert moved.weighting.global_state()["sa_adam_step"][0] == 4


@pytest.mark.parametrize("global_first", [True, False])
def test_self_adaptive_checkpoint_round_trip(global_first):
    run = started_sa(mask="softplus")
    for s in range(2):
        run.step(random_squared(run.points, seed=s), s)
    saved_points, saved_global = run.weighting.point_state(), run.weighting.global_state()

    # Restored on a rank whose block holds the stored rows in another order.
    groups = run.points.groups
    order = np.random.default_rng(0).permutation(len(groups["pde"]))
    restored_groups = {**groups, "pde": groups["pde"][order]}
    restored = PointSet(restored_groups, {**PointSet.unchanged(groups).origin, "pde": order})
    again = make_weighting(case({"weighting": "self_adaptive", "self_adaptive": {"mask": "softplus", "lr": 0.01}}).ctx)
    if global_first:
        again.load_global_state(saved_global)
    again.load_point_state(saved_points)
    restored_batch = run.case.batch(restored_groups)
    again.on_points(restored, restored_batch)
    if not global_first:
        again.load_global_state(saved_global)

    for name, fields in again.point_state().items():
        rows = order if name == "pde" else slice(None)
        for field, values in fields.items():
            np.testing.assert_array_equal(values, saved_points[name][field][rows])
    squared = random_squared(run.points, seed=7)
    run.step(squared, 2)
    step(again, run.case.objective, restored_batch, {**squared, "pde": squared["pde"][order]}, 2)
    torch.testing.assert_close(again.parameters()[0], run.lambdas()["pde"][order], rtol=0, atol=0)


def test_self_adaptive_two_ranks_match_one():
    """Each rank holds part of the points: λ and the global diagnostics equal the single rank's."""
    single = started_sa()
    counts = single.points.counts()
    parts = (slice(0, 5), slice(5, None))
    ranks = []
    for part in parts:
        c = case({"weighting": "self_adaptive", "self_adaptive": {"lr": 0.01}})
        groups = {name: x[part] for name, x in single.points.groups.items()}
        points, batch = PointSet(groups), c.batch(groups, counts)
        weighting = make_weighting(c.ctx)
        weighting.on_points(points, batch)
        ranks.append(Started(c, weighting, points, batch))
    for s in range(3):
        squared = random_squared(single.points, seed=s)
        diagnostics = single.step(squared, s)
        summed = sum(rank.step({k: v[part] for k, v in squared.items()}, s) for rank, part in zip(ranks, parts))
        torch.testing.assert_close(summed, diagnostics)  # the report's global mean and mean square
    for name, lam in single.lambdas().items():
        joined = torch.cat([rank.lambdas()[name].detach() for rank in ranks])
        torch.testing.assert_close(joined, lam.detach(), rtol=0, atol=0)


def test_self_adaptive_report_is_the_global_mean_and_spread():
    run = started_sa(mask="identity", lr=0.1)
    squared = {name: torch.zeros(len(x), dtype=DTYPE) for name, x in run.points.groups.items()}
    squared["pde"][:3] = 1.0
    run.step(squared, 0)  # λ_pde: 1.1 at three points, 1 elsewhere
    run.step(squared, 1)  # the report is of the weights this step used
    w = np.r_[np.full(3, 1.1), np.ones(len(squared["pde"]) - 3)]
    report = run.weighting.report()
    assert report["sa_mean/pde"] == pytest.approx(w.mean())
    assert report["sa_std/pde"] == pytest.approx(w.std())
    assert report["sa_mean/u(0)=1"] == pytest.approx(1.0) and report["sa_std/u(0)=1"] == pytest.approx(0, abs=1e-7)


def test_self_adaptive_weights_need_points():
    weighting = make_weighting(case({"weighting": "self_adaptive"}).ctx)
    with pytest.raises(RuntimeError, match=r"before on_points"):
        weighting.weights()


def test_self_adaptive_frozen_keeps_lambda():
    run = started_sa()
    run.weighting.frozen = True
    run.step(random_squared(run.points, seed=0), 0)
    assert all(torch.all(lam == 1.0) and lam.grad is None for lam in run.lambdas().values())
    assert run.weighting.ascent_steps == 0


# ---------------------------------------------------------------------------------- balanced
class FakeNorms:
    """``gradient_norms`` returning given values, counting its calls."""

    def __init__(self, values):
        self.values, self.calls = torch.tensor(values, dtype=DTYPE), 0

    def __call__(self):
        self.calls += 1
        return self.values


def test_balanced_weights_are_a_moving_average_of_the_gradient_norm_ratios():
    balanced = make_weighting(case({"weighting": "balanced", "balanced": {"every": 10, "momentum": 0.75}}).ctx)
    assert isinstance(balanced, BalancedWeights)
    assert [float(w) for w in balanced.weights().values()] == [1.0, 1.0, 1.0]  # not the problem's 1e6, 1e2

    norms = FakeNorms([1.0, 2.0, 4.0])
    balanced.before_step(0, norms)
    first = 0.75 + 0.25 * np.array([7.0, 3.5, 1.75])
    np.testing.assert_allclose([float(w) for w in balanced.weights().values()], first)
    for s in range(1, 10):
        balanced.before_step(s, norms)
    assert norms.calls == 1

    norms.values = torch.tensor([3.0, 0.0, 1.0], dtype=DTYPE)  # a term without gradient keeps its weight
    balanced.before_step(10, norms)
    second = 0.75 * first + 0.25 * np.array([4.0 / 3.0, first[1], 4.0])
    np.testing.assert_allclose(list(balanced.report().values()), second)
    assert list(balanced.report()) == ["balanced/pde", "balanced/u(0)=1", "balanced/u'(0)=0"]

    balanced.frozen = True
    balanced.before_step(20, norms)
    assert norms.calls == 2

    again = make_weighting(case({"weighting": "balanced"}).ctx)
    again.load_global_state(balanced.global_state())
    np.testing.assert_array_equal([float(w) for w in again.weights().values()], second)


# ---------------------------------------------------------------------------------- causal
CAUSAL = {"causal": {"enabled": True, "chunks": 4, "epsilon": 2.0}}


def causal_points() -> PointSet:
    t = np.array([0.0, 0.1, 0.3, 0.26, 0.55, 0.74, 0.99, 1.0, 0.6, 0.2])[:, None]
    return PointSet({"pde": t, "u(0)=1": np.zeros((2, 1)), "u'(0)=0": np.zeros((1, 1))})


CHUNK_OF = np.array([0, 0, 1, 1, 2, 2, 3, 3, 2, 0])  # [0, .25), [.25, .5), [.5, .75), [.75, 1]


def test_causal_weights_match_a_hand_computation():
    c = case(CAUSAL)
    causal = make_weighting(c.ctx).parts[1]
    assert isinstance(causal, CausalWeights)
    points = causal_points()
    causal.on_points(points, c.batch(points.groups))
    np.testing.assert_array_equal(causal.chunk_of.numpy(), CHUNK_OF)
    assert torch.all(causal.weights()["pde"] == 1)  # before the first step: no chunk losses yet

    losses = np.array([0.5, 0.25, 1.0, 3.0])
    causal.after_sync(0, torch.tensor(losses))
    by_chunk = np.exp(-2.0 * np.array([0.0, 0.5, 0.75, 1.75]))  # exp(-ε Σ_{j<i} L_j)
    weights = causal.weights()
    np.testing.assert_allclose(weights["pde"].numpy(), by_chunk[CHUNK_OF], rtol=1e-14)
    assert float(weights["u(0)=1"]) == 1.0 and float(weights["u'(0)=0"]) == 1.0
    assert causal.report() == {"causal_min_weight": pytest.approx(by_chunk[-1]), "causal_front": 0.25}

    causal.frozen = True
    causal.after_sync(1, torch.zeros(4, dtype=DTYPE))
    np.testing.assert_allclose(causal.weights()["pde"].numpy(), by_chunk[CHUNK_OF], rtol=1e-14)

    for global_first in (True, False):  # a checkpoint's chunk losses, restored before or after the points
        again = make_weighting(case(CAUSAL).ctx).parts[1]
        if global_first:
            again.load_global_state(causal.global_state())
        again.on_points(points, c.batch(points.groups))
        if not global_first:
            again.load_global_state(causal.global_state())
        torch.testing.assert_close(again.weights()["pde"], weights["pde"], rtol=0, atol=0)


def test_causal_diagnostics_are_chunk_means_on_any_rank_count():
    points = causal_points()
    squared = torch.linspace(0.1, 2.0, len(CHUNK_OF), dtype=DTYPE)
    chunk_means = np.array([squared.numpy()[CHUNK_OF == c].mean() for c in range(4)])
    parts = {1: [slice(None)], 2: [slice(0, 3), slice(3, None)], 3: [slice(0, 0), slice(0, 7), slice(7, None)]}

    def run(world_size):
        def rank(comm):
            part = parts[world_size][comm.rank]
            c = case(CAUSAL, comm=comm)
            causal = CausalWeights(c.ctx)
            groups = {**points.groups, "pde": points.groups["pde"][part]}
            batch = c.batch(groups, points.counts())
            causal.on_points(PointSet(groups), batch)
            local = causal.diagnostics({"pde": squared[part]}, batch)
            causal.after_sync(0, comm.all_reduce_sum(local))
            return causal.chunk_losses, causal.weights()["pde"]

        return on_ranks(world_size, rank)

    ((losses, weights),) = run(1)
    np.testing.assert_allclose(losses, chunk_means, rtol=1e-14)
    for world_size in (2, 3):
        results = run(world_size)
        for rank_losses, _ in results:
            np.testing.assert_allclose(rank_losses, chunk_means, rtol=1e-14)
        torch.testing.assert_close(torch.cat([w for _, w in results]), weights, rtol=1e-14, atol=0)


def test_causal_empty_chunk_has_zero_loss():
    c = case(CAUSAL)
    causal = CausalWeights(c.ctx)
    points = PointSet({**causal_points().groups, "pde": np.array([[0.1], [0.2], [0.3]])})  # chunks 2, 3 empty
    batch = c.batch(points.groups)
    causal.on_points(points, batch)
    diagnostics = causal.diagnostics({"pde": torch.tensor([1.0, 3.0, 5.0], dtype=DTYPE)}, batch)
    np.testing.assert_array_equal(diagnostics.numpy(), [2.0, 5.0, 0.0, 0.0])


def test_causal_needs_a_time_input():
    """Refused when the experiment is built, before any weighting or training exists."""
    cos1d = {**HARMONIC, "problem": {"name": "cos1d", "params": {"omega": 15}},
             "decomposition": {"levels": [{"subdomains": [4]}], "overlap": 1.9}}
    with pytest.raises(ConfigError, match=r"loss\.causal\.axis: 't' .*\['x'\].*time input"):
        case({"causal": {"enabled": True}}, base=cos1d)


# ---------------------------------------------------------------------------------- product
def test_product_multiplies_weights_and_splits_diagnostics():
    c = case({"weighting": "self_adaptive", "self_adaptive": {"init": 0.5}, **CAUSAL})
    product = make_weighting(c.ctx)
    assert isinstance(product, ProductWeighting) and product.name == "self_adaptive+causal"
    sa, causal = product.parts
    points = causal_points()
    batch = c.batch(points.groups)
    product.on_points(points, batch)
    assert product.n_diagnostics == 2 * 3 + 4

    squared = {name: torch.full((len(x),), 0.5, dtype=DTYPE) for name, x in points.groups.items()}
    step(product, c.objective, batch, squared, 0)
    np.testing.assert_allclose(causal.chunk_losses, np.full(4, 0.5))  # mean r², not weighted by λ
    assert sa.report()["sa_mean/pde"] == pytest.approx(0.25)  # the step's mask(λ) = 0.5²

    weights = product.weights()
    sa_weights, causal_weights = sa.weights(), causal.weights()
    for name in c.objective.names:
        torch.testing.assert_close(weights[name], sa_weights[name] * causal_weights[name])
    assert not torch.all(causal_weights["pde"] == 1)
    product.frozen = True
    assert sa.frozen and causal.frozen
    assert set(product.global_state()) == {"sa_adam_step", "causal_chunk_losses"}
    assert set(product.point_state()["pde"]) == {"sa_lambda", "sa_adam_m", "sa_adam_v"}
    assert math.isfinite(sum(product.report().values()))
