"""Test-set errors against the exact or reference solution, reduced over all processes.

Defines :class:`TestErrors` and :func:`test_errors`: relative L2 ‖u−û‖₂/‖u‖₂, L1 mean|u−û| and
normalised L1 mean|u−û|/std(u) on the regular test grid (all output fields together).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpinn.parallel.comm import Communicator

__all__ = ["TestErrors", "test_errors"]


@dataclass(frozen=True)
class TestErrors:
    rel_l2: float
    l1: float
    normalised_l1: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def test_errors(prediction: Tensor, exact: Tensor, comm: Communicator) -> TestErrors:
    """Errors of ``prediction`` vs ``exact`` (both [n_own, n_out], any float dtype), global over ranks."""
    p, e = prediction.detach().double(), exact.detach().double().to(prediction.device)
    diff = p - e
    sums = torch.stack(
        [
            (diff * diff).sum(),
            (e * e).sum(),
            diff.abs().sum(),
            e.sum(),
            torch.tensor(float(e.numel()), dtype=torch.float64, device=e.device),
        ]
    )
    sq_err, sq_ref, abs_err, total, n = comm.all_reduce_sum(sums).tolist()
    mean = total / n
    std = math.sqrt(max(sq_ref / n - mean * mean, 0.0))
    l1 = abs_err / n
    return TestErrors(
        rel_l2=math.sqrt(sq_err / sq_ref) if sq_ref > 0 else math.sqrt(sq_err),
        l1=l1,
        normalised_l1=l1 / std if std > 0 else float("nan"),
    )
