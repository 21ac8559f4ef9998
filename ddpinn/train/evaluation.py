"""Test-set predictions and errors against the exact or reference solution, reduced over all processes.

Defines :class:`TestErrors`, :func:`predict_test_set` (the prediction chunk by chunk) and
:func:`evaluate_test_set`: relative L2 ‖u−û‖₂/‖u‖₂, L1 mean|u−û| and normalised L1
mean|u−û|/std(u) on the regular test grid (all output fields together), and for a problem with
several outputs the relative L2 of each (a recovered coefficient field, say). The errors come from
sums accumulated over the chunks and reduced over the ranks once. Used by the trainer (at every
evaluation) and by :mod:`ddpinn.train.finish` (the final write).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.batching import TestChunk, TestSet
from ddpinn.parallel.comm import Communicator

__all__ = ["TestErrors", "evaluate_test_set", "predict_test_set"]

Predict = Callable[[EvaluationBatch], Tensor]
"""u at a batch's own points: [n_own, n_out]. A collective (the halo exchange)."""


_PER_OUTPUT = "rel_l2_"
"""Key prefix of the per-output relative L2 errors in :meth:`TestErrors.as_dict` (``rel_l2_k``)."""


@dataclass(frozen=True)
class TestErrors:
    rel_l2: float
    l1: float
    normalised_l1: float
    rel_l2_per_output: dict[str, float] = field(default_factory=dict)
    """Relative L2 of each output on its own, by output name; empty for a single output."""

    def as_dict(self) -> dict[str, float]:
        """Flat: ``rel_l2``, ``l1``, ``normalised_l1`` and ``rel_l2_<output>`` per output."""
        per_output = {f"{_PER_OUTPUT}{name}": value for name, value in self.rel_l2_per_output.items()}
        return {"rel_l2": self.rel_l2, "l1": self.l1, "normalised_l1": self.normalised_l1, **per_output}

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> TestErrors:
        """The inverse of :meth:`as_dict` (``summary.json``'s ``errors``)."""
        per_output = {k[len(_PER_OUTPUT):]: v for k, v in values.items() if k.startswith(_PER_OUTPUT)}
        return cls(values["rel_l2"], values["l1"], values["normalised_l1"], per_output)

    @classmethod
    def from_sums(cls, sums: Tensor, output_names: tuple[str, ...]) -> TestErrors:
        """From the global :func:`error_sums` ([n_out, 5], summed over chunks and ranks)."""
        sq_err, sq_ref, abs_err, total, n = sums.sum(dim=0).tolist()
        mean = total / n
        std = math.sqrt(max(sq_ref / n - mean * mean, 0.0))
        l1 = abs_err / n
        per_output = {name: _relative(*row[:2]) for name, row in zip(output_names, sums.tolist())}
        return cls(
            rel_l2=_relative(sq_err, sq_ref),
            l1=l1,
            normalised_l1=l1 / std if std > 0 else float("nan"),
            rel_l2_per_output=per_output if len(output_names) > 1 else {},
        )


def _relative(sq_err: float, sq_ref: float) -> float:
    """‖u−û‖₂/‖u‖₂ from the two sums of squares (the absolute error when u = 0)."""
    return math.sqrt(sq_err / sq_ref) if sq_ref > 0 else math.sqrt(sq_err)


def error_sums(prediction: Tensor, exact: Tensor) -> Tensor:
    """[Σ(u−û)², Σû², Σ|u−û|, Σû, count] per output column of ``prediction`` vs ``exact`` (both
    [n, n_out]): float64 [n_out, 5] on the prediction's device (no host synchronisation)."""
    p, e = prediction.detach().double(), exact.detach().double().to(prediction.device)
    diff = p - e
    count = torch.full((e.shape[1],), float(e.shape[0]), dtype=torch.float64, device=p.device)
    return torch.stack([(diff * diff).sum(0), (e * e).sum(0), diff.abs().sum(0), e.sum(0), count], dim=1)


def predict_test_set(test: TestSet, predict: Predict) -> Iterator[tuple[TestChunk, Tensor]]:
    """Each chunk of the own test points with the prediction there ([n_chunk, n_out]). A
    collective: every rank goes through the same number of chunks."""
    for chunk, batch in test.batches():
        yield chunk, predict(batch)


def evaluate_test_set(test: TestSet, predict: Predict, comm: Communicator) -> TestErrors | None:
    """The global test errors (None when the problem has no exact solution); one all-reduce."""
    if not test.has_exact:
        return None
    outputs = tuple(test.factory.exp.problem.outputs)
    sums = torch.zeros(len(outputs), 5, dtype=torch.float64, device=test.device)
    for chunk, prediction in predict_test_set(test, predict):
        sums += error_sums(prediction, chunk.exact)
    return TestErrors.from_sums(comm.all_reduce_sum(sums), outputs)
