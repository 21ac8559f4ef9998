"""The memory model (ddpinn/parallel/memory.py): its structural count equals what autograd keeps,
the estimate is linear in the pairs and follows a rank's counts, finite differences evaluate one
value per slot, and it predicts the measured peak of a small run in a fresh process (with jets
and with finite differences)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.jets import JetSpec
from ddpinn.model.activations import make_activation
from ddpinn.model.mlp import StackedMLP
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.memory import (
    CPU_COMPILER_BYTES, CUDA_CONTEXT_BYTES, BatchCounts, MemoryEstimate, estimate_rank_memory, saved_values_per_slot,
)
from ddpinn.parallel.workload import workload

REPO = Path(__file__).resolve().parents[1]


def _saved_bytes(sizes: tuple[int, ...], spec: JetSpec, slots: int, rows: int = 3) -> int:
    """Bytes of the distinct storages autograd saves in one jets() call, plus its output."""
    net = StackedMLP(rows, sizes, make_activation("tanh"), torch.float32)
    net.initialise(0, 0, torch.arange(rows).numpy())
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net.jets(torch.rand(rows, sizes[0], slots), torch.ones(rows, sizes[0]), spec)
    storages[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize(
    "sizes, requested",
    [
        ((2, 16, 1), [(0, 0), (1, 1)]),  # P4: the shipped Poisson network, Laplacian
        ((2, 32, 32, 1), [(1,), (0, 0)]),  # Burgers: two hidden layers, u_t and u_xx
        ((1, 32, 1), [(0, 0)]),  # the oscillator
        ((2, 16, 1), []),  # values only (evaluation)
        ((2, 20, 24, 16, 2), [(0, 0), (0, 1), (1, 1)]),  # three hidden layers, two outputs, mixed
        ((3, 8, 8, 1), [(0, 0, 0), (1, 2)]),  # third order: two chain-rule intermediates per unit
    ],
)
def test_saved_values_per_slot_is_what_autograd_keeps(sizes, requested):
    """Per slot, the storages autograd keeps (and the output) grow by exactly the structural count
    plus the input x_norm, which the batch already holds."""
    spec = JetSpec.closure(sizes[0], requested)
    rows, slots = 3, 500
    per_slot = (_saved_bytes(sizes, spec, 2 * slots) - _saved_bytes(sizes, spec, slots)) / (rows * slots * 4)
    assert per_slot - sizes[0] == saved_values_per_slot(sizes, spec)


@pytest.fixture(scope="module")
def p4_l5():
    """P4 L = 5 with a test grid of one chunk (a grid of several chunks bounds the test set's
    temporaries by the chunk, not by the points)."""
    return build_experiment(load_config(REPO / "configs/poisson2d_L5.yaml", ["sampling.test_n=[100,100]"]))


def _counts(points: int, pairs: list[int], parameters: int = 22165, rows_per_point: int = 1) -> BatchCounts:
    return BatchCounts({"pde": points}, rows_per_point * points, 0, dict(enumerate(pairs)), parameters)


def test_estimate_is_linear_in_pairs_and_points(p4_l5):
    """Doubling a rank's points and pairs doubles everything but the baseline and the parameters."""
    one = estimate_rank_memory(p4_l5, _counts(3200, [3200, 11552, 11552, 11552, 11552]), compiled=False)
    two = estimate_rank_memory(p4_l5, _counts(6400, [6400, 23104, 23104, 23104, 23104]), compiled=False)
    fixed = ("baseline", "parameters+optimizer")
    for part, value in one.by_part.items():
        expected = value if part in fixed else 2 * value
        assert two.by_part[part] == pytest.approx(expected, rel=1e-6, abs=2), part


def test_activations_follow_the_levels_a_rank_evaluates(p4_l5):
    """Every level's activations are alive together (one part per level, proportional to its
    pairs); the transient is the largest level's only."""
    est = estimate_rank_memory(p4_l5, _counts(6400, [6400, 23104, 0, 0, 46208]))
    assert est.by_part["activations level 5"] == pytest.approx(2 * est.by_part["activations level 2"], rel=1e-6)
    assert est.by_part["activations level 3"] == 0
    alone = estimate_rank_memory(p4_l5, _counts(6400, [0, 0, 0, 0, 46208]))
    assert alone.by_part["step transient"] == pytest.approx(est.by_part["step transient"], rel=1e-6)


def test_more_ranks_less_memory_per_rank(p4_l5):
    """A rank of a 4-rank job (a quarter of the points and pairs, all of the replicated level 1,
    some halo points) needs less than one process, and more than a quarter of its tensors."""
    whole = estimate_rank_memory(p4_l5, _counts(6400, [6400, 23104, 23104, 23104, 23104]))
    quarter = estimate_rank_memory(
        p4_l5, BatchCounts({"pde": 1600}, 1600, 700, {0: 1600, 1: 23104 // 4 + 1400, 2: 6400, 3: 6400, 4: 6400}, 12000)
    )
    assert quarter.total_bytes < whole.total_bytes
    assert quarter.tensor_bytes > whole.tensor_bytes / 4


def test_finite_differences_evaluate_the_value_only_at_stencil_points(p4_l5):
    """Under ``model.derivatives: fd`` a slot is a (stencil point, subdomain) pair evaluated
    value-only: for the same counts, the per-slot parts (activations, host build) are those of a
    value-only evaluation (the same run needing no derivatives), and the own points add the
    stencil's map to the batch and its application to the step. On the analytic counts of one
    rank the slots grow by P4's 5 stencil points per point, the bytes per slot shrink, and the test
set stays what it is with jets."""
    fd = build_experiment(load_config(REPO / "configs/poisson2d_L5.yaml", ["sampling.test_n=[100,100]", "model.derivatives=fd"]))
    values_only = replace(p4_l5, spec=JetSpec.closure(2, []))
    pairs = [5 * p for p in (6400, 23104, 23104, 23104, 23104)]
    counts = _counts(6400, pairs, rows_per_point=5)
    with_fd, plain = estimate_rank_memory(fd, counts), estimate_rank_memory(values_only, counts)
    per_slot = [k for k in plain.by_part if k.startswith("activations")] + ["batch build (host)"]
    assert {k: with_fd.by_part[k] for k in per_slot} == {k: plain.by_part[k] for k in per_slot}
    assert with_fd.by_part["batch"] > plain.by_part["batch"]
    assert with_fd.by_part["step transient"] > plain.by_part["step transient"]

    one = ParallelLayout.single(p4_l5.decomposition, p4_l5.cells)
    jets_rank, fd_rank = workload(p4_l5, one).ranks[0], workload(fd, one).ranks[0]
    assert fd_rank.pairs_by_level == {l: 5 * p for l, p in jets_rank.pairs_by_level.items()}
    assert (fd_rank.own_rows, fd_rank.halo_points) == (5 * jets_rank.n_own, 0)
    jets_est, fd_est = estimate_rank_memory(p4_l5, jets_rank), estimate_rank_memory(fd, fd_rank)
    # The test points are evaluated value-only at themselves with either: the same test set.
    assert fd_est.by_part["test set"] == pytest.approx(jets_est.by_part["test set"], rel=1e-6)
    for l, p in jets_rank.pairs_by_level.items():
        part = f"activations level {l + 1}"
        assert fd_est.by_part[part] / fd_rank.pairs_by_level[l] < 0.5 * jets_est.by_part[part] / p, part


def test_cuda_estimate_has_no_host_build_and_counts_the_context(p4_l5):
    counts = _counts(6400, [6400, 23104, 23104, 23104, 23104])
    cpu, cuda = estimate_rank_memory(p4_l5, counts, "cpu"), estimate_rank_memory(p4_l5, counts, "cuda:1")
    assert "batch build (host)" not in cuda.by_part and "batch build (host)" in cpu.by_part
    assert cuda.by_part["baseline"] == CUDA_CONTEXT_BYTES
    assert cuda.tensor_bytes > cpu.by_part["batch"] + cpu.by_part["activations level 5"]
    with pytest.raises(ValueError, match="device_kind"):
        estimate_rank_memory(p4_l5, counts, "tpu")


def test_describe_names_the_dominant_parts():
    est = MemoryEstimate({"baseline": 100, "activations level 7": 700, "batch": 200, "test set": 1}, "cpu")
    assert est.total_bytes == 1001 and est.tensor_bytes == 901
    assert [name for name, _ in est.dominant(2)] == ["activations level 7", "batch"]
    text = est.describe(2)
    assert "activations level 7" in text and "batch" in text and "test set" not in text


def test_lbfgs_history_is_counted(p4_l5):
    counts = _counts(6400, [6400, 23104, 23104, 23104, 23104])
    with_lbfgs = replace(p4_l5, cfg=load_config(REPO / "configs/poisson2d_L5.yaml", ["lbfgs.steps=10", "sampling.test_n=[100,100]"]))
    adam = estimate_rank_memory(p4_l5, counts).by_part["parameters+optimizer"]
    both = estimate_rank_memory(with_lbfgs, counts).by_part["parameters+optimizer"]
    assert both == adam + (2 * 20 + 4) * 22165 * 4


@pytest.mark.parametrize("derivatives", ["jets", "fd"])
def test_predicts_the_measured_peak_of_a_small_run(derivatives):
    """P4 L = 3 on 160² points (about 0.2M pairs; 1.1M value-only stencil pairs with fd), in a
    fresh process: the resident peak after 4 eager steps within 20% of the prediction, and the
    step's own memory (a difference of two resident sizes, so a noisier figure) between 0.8x and
    1.6x of it: the model counts the largest level's backward temporaries in full, and at L = 3,
    with 44% of the slots on one level, they overlap more (+35% and +43% measured in two runs;
    fd, five runs: peak 0.97-1.03x, step 0.97-1.30x)."""
    cmd = [sys.executable, str(REPO / "benchmarks/memory_model.py"), "--probe", "configs/poisson2d_L3.yaml",
           "--set", "sampling.n=[160,160]", "--set", "train.compile=off", "--set", f"model.derivatives={derivatives}"]
    row = json.loads(subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout)
    assert row["predicted_peak_mb"] / row["peak_mb"] == pytest.approx(1, abs=0.2), row
    assert 0.8 <= row["predicted_step_mb"] / row["step_mb"] <= 1.6, row


def test_compiled_follows_the_config_and_adds_the_compiler(p4_l5):
    """``compiled=None`` reads train.compile (auto counts as compiled); compiling adds the part of
    the compiler's memory that the step does not reuse: some on a small rank, none on a large one."""
    counts = _counts(6400, [6400, 23104, 23104, 23104, 23104])
    eager_cfg = replace(p4_l5, cfg=load_config(REPO / "configs/poisson2d_L5.yaml", ["train.compile=off", "sampling.test_n=[100,100]"]))
    eager, compiled = estimate_rank_memory(eager_cfg, counts), estimate_rank_memory(p4_l5, counts)
    assert eager.by_part == estimate_rank_memory(p4_l5, counts, compiled=False).by_part
    assert 0 < compiled.total_bytes - eager.total_bytes < CPU_COMPILER_BYTES
    large = _counts(64000, [64000, 231040, 231040, 231040, 231040])
    assert estimate_rank_memory(p4_l5, large).total_bytes == estimate_rank_memory(p4_l5, large, compiled=False).total_bytes
