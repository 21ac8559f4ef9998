"""Trainable problem parameters (inverse problems): scalars learnt with the networks.

Defines :class:`TrainableParameters`. A problem names float fields in ``trainable``; each
becomes a 0-d :class:`torch.nn.Parameter`, bound to the problem instance under the same name,
so that ``self.mu`` in a residual is the learnt value. They are replicated on every process (a
tiny all-reduced level of their own). Used by the trainer.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ddpinn.problems.base import Problem

__all__ = ["TrainableParameters"]


class TrainableParameters(nn.Module):
    def __init__(self, problem: Problem, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.values = nn.ParameterDict(
            {name: nn.Parameter(torch.tensor(float(getattr(problem, name)), dtype=dtype, device=device))
             for name in problem.trainable}
        )
        for name, param in self.values.items():
            setattr(problem, name, param)

    def named_values(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.values.items())

    def current(self) -> dict[str, float]:
        """Current values, for logs and summaries."""
        return {name: float(p.detach()) for name, p in self.values.items()}
