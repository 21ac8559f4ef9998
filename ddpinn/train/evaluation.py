"""Test-set predictions and errors against the exact or reference solution, reduced over all processes.

Defines :class:`TestErrors`, :func:`predict_test_set` (the prediction chunk by chunk) and
:func:`evaluate_test_set`: relative L2 ‖u−û‖₂/‖u‖₂, L1 mean|u−û| and normalised L1
mean|u−û|/std(u) on the regular test grid (all output fields together). The errors come from
sums accumulated over the chunks and reduced over the ranks once. Used by the trainer (at every
evaluation) and by :mod:`ddpinn.train.finish` (the final write).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.batching import TestChunk, TestSet
from ddpinn.parallel.comm import Communicator

__all__ = ["TestErrors", "evaluate_test_set", "predict_test_set"]

Predict = Callable[[EvaluationBatch], Tensor]
"""u at a batch's own points: [n_own, n_out]. A collective (the halo exchange)."""


@dataclass(frozen=True)
class TestErrors:
    rel_l2: float
    l1: float
    normalised_l1: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_sums(cls, sums: Tensor) -> TestErrors:
        """From the global :func:`error_sums` (summed over chunks and ranks)."""
        sq_err, sq_ref, abs_err, total, n = sums.tolist()
        mean = total / n
        std = math.sqrt(max(sq_ref / n - mean * mean, 0.0))
        l1 = abs_err / n
        return cls(
            rel_l2=math.sqrt(sq_err / sq_ref) if sq_ref > 0 else math.sqrt(sq_err),
            l1=l1,
            normalised_l1=l1 / std if std > 0 else float("nan"),
        )


def error_sums(prediction: Tensor, exact: Tensor) -> Tensor:
    """[Σ(u−û)², Σû², Σ|u−û|, Σû, count] over ``prediction`` vs ``exact`` (both [n, n_out]):
    float64 [5] on the prediction's device (no host synchronisation)."""
    p, e = prediction.detach().double(), exact.detach().double().to(prediction.device)
    diff = p - e
    count = torch.tensor(float(e.numel()), dtype=torch.float64, device=p.device)
    return torch.stack([(diff * diff).sum(), (e * e).sum(), diff.abs().sum(), e.sum(), count])


def predict_test_set(test: TestSet, predict: Predict) -> Iterator[tuple[TestChunk, Tensor]]:
    """Each chunk of the own test points with the prediction there ([n_chunk, n_out]). A
    collective: every rank goes through the same number of chunks."""
    for chunk, batch in test.batches():
        yield chunk, predict(batch)


def evaluate_test_set(test: TestSet, predict: Predict, comm: Communicator) -> TestErrors | None:
    """The global test errors (None when the problem has no exact solution); one all-reduce."""
    if not test.has_exact:
        return None
    sums = torch.zeros(5, dtype=torch.float64, device=test.device)
    for chunk, prediction in predict_test_set(test, predict):
        sums += error_sums(prediction, chunk.exact)
    return TestErrors.from_sums(comm.all_reduce_sum(sums))
