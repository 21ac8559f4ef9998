"""Learning-rate schedules as pure functions of the step (so a resumed run continues exactly)."""

from __future__ import annotations

import math

from ddpinn.config import ScheduleConfig

__all__ = ["learning_rate"]


def learning_rate(base: float, schedule: ScheduleConfig, step: int, total_steps: int) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps`` Adam steps."""
    warm = 1.0
    if schedule.warmup_steps and step < schedule.warmup_steps:
        warm = (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return base * warm
    if schedule.kind == "exponential":
        span = schedule.decay_steps or max(total_steps, 1)
        return base * warm * schedule.decay ** (step / span)
    # cosine from base to min_lr over the steps after warm-up
    span = max(total_steps - schedule.warmup_steps, 1)
    progress = min(max(step - schedule.warmup_steps, 0) / span, 1.0)
    return warm * (schedule.min_lr + 0.5 * (base - schedule.min_lr) * (1 + math.cos(math.pi * progress)))
