"""Conditioned (parametric) problems: problem parameters as extra input axes that are not decomposed.

``problem.conditioned: {omega: [5, 15]}`` turns the parameter ``omega`` of a problem into an input
axis sampled over ``[5, 15]``: one training run learns the family u(x; ω), and the trained model
is evaluated at parameter values it never saw (``ddpinn.load(run).predict`` with an ω column).
The build gives every level a single subdomain spanning a parameter axis (its window factor is 1
and every subdomain network sees the parameter normalised to [-1, 1]) and one ownership cell
along it, so the process grid never cuts it: a cut would put every subdomain on both sides.

Defines :class:`ConditionedProblem` (a problem wrapped so that its parameters are input columns)
and :func:`condition` (the checked constructor ``build_experiment`` calls). A problem opts in by
listing the parameters its methods accept as per-point tensors in ``Problem.conditionable``:
while one of its methods runs on points ``x``, the attribute holds the [n] column of ``x``
(``self.omega * x[:, 0]`` then works unchanged), and its ``output_mean``/``output_scale``, when
they depend on the parameter, are folded into the hard constraint per point. A problem may also
declare parameter inputs itself (``Problem.parameter_inputs``) and read them from ``x``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems.base import (
    Constraint,
    Derivatives,
    Face,
    HardConstraint,
    Point,
    Points,
    Problem,
    ProblemError,
    as_columns,
)

__all__ = ["ConditionedProblem", "condition"]


class ConditionedProblem(Problem):
    """``base`` with the parameters of ``ranges`` (name -> (lo, hi)) as extra inputs, appended after
    its own in the order given: inputs ``base.inputs + tuple(ranges)``, domain the base's box times
    the ranges. Built by :func:`condition`, which checks the names and ranges.

    Every method of ``base`` runs with each conditioned attribute bound to the matching column of
    its points ([n] tensor). Attributes not defined here (a problem's own fields) are read from
    ``base``; its ``trainable`` parameters are set on ``base`` (the trainer binds them by name).
    """

    def __init__(self, base: Problem, ranges: Mapping[str, tuple[float, float]]) -> None:
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "ranges", {name: (float(lo), float(hi)) for name, (lo, hi) in ranges.items()})
        n_base = len(base.inputs)
        object.__setattr__(self, "_columns", {name: n_base + k for k, name in enumerate(self.ranges)})
        # Does the output normalisation follow a parameter (P1: scale 1/ω)? Then it becomes a
        # per-point factor of the hard constraint, and the networks' own normalisation is (0, 1).
        centre = torch.as_tensor(self.domain().centre, dtype=torch.float64)[None, :]
        with self._bound(centre):
            varies = torch.is_tensor(base.output_mean) or torch.is_tensor(base.output_scale)
        object.__setattr__(self, "_fold_output", varies)

    # ------------------------------------------------------------------ declarations
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.base.name

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.base.inputs) + tuple(self.ranges)

    @property
    def parameter_inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.base.parameter_inputs) + tuple(self.ranges)

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.base.outputs

    @property
    def derivatives(self) -> tuple[D, ...]:  # type: ignore[override]
        return self.base.derivatives

    @property
    def trainable(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.base.trainable

    @property
    def output_mean(self) -> float:  # type: ignore[override]
        return 0.0 if self._fold_output else self.base.output_mean

    @property
    def output_scale(self) -> float:  # type: ignore[override]
        return 1.0 if self._fold_output else self.base.output_scale

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.base.trainable:
            setattr(self.base, name, value)
        else:
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        ranges = ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in self.ranges.items())
        return f"{type(self.base).__name__} conditioned on {ranges}"

    # ------------------------------------------------------------------ the problem, per point
    @contextmanager
    def _bound(self, x: Tensor) -> Iterator[None]:
        """Bind each conditioned attribute of ``base`` to its column of ``x`` ([n, dim]) meanwhile."""
        saved = {name: getattr(self.base, name) for name in self.ranges}
        try:
            for name, column in self._columns.items():
                object.__setattr__(self.base, name, x[:, column])
            yield
        finally:
            for name, value in saved.items():
                object.__setattr__(self.base, name, value)

    def _per_point(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(x, ...)`` of ``base``, run with the parameters bound to the columns of ``x``."""

        def call(x: Tensor, *args: Any) -> Any:
            with self._bound(x):
                return fn(x, *args)

        return call

    def domain(self) -> Box:
        box = self.base.domain()
        lo = [lo for lo, _ in self.ranges.values()]
        hi = [hi for _, hi in self.ranges.values()]
        return Box(tuple(box.lo) + tuple(lo), tuple(box.hi) + tuple(hi))

    def residual(self, x: Tensor, d: Derivatives) -> Tensor | tuple[Tensor, ...]:
        return self._per_point(self.base.residual)(x, d)

    def exact(self, x: Tensor) -> Tensor | None:
        return self._per_point(self.base.exact)(x)

    def true_parameters(self) -> dict[str, float]:
        return self.base.true_parameters()

    def hard_constraint(self, x: Tensor) -> HardConstraint | None:
        """The base's ansatz at ``x``; with a parameter-dependent output normalisation (m, s) it is
        ``u = shift + scale·(m + s·N) = (shift + scale·m) + (scale·s)·N`` per point."""
        with self._bound(x):
            hc = self.base.hard_constraint(x)
            if not self._fold_output:
                return hc
            hc = hc or HardConstraint()
            n_out = len(self.outputs)
            mean = as_columns(self.base.output_mean, x, n_out)
            scale = as_columns(self.base.output_scale, x, n_out)
            hc_scale = as_columns(hc.scale, x, n_out)
            return HardConstraint(scale=hc_scale * scale, shift=as_columns(hc.shift, x, n_out) + hc_scale * mean)

    def constraints(self) -> Sequence[Constraint]:
        """The base's soft constraints over the parameter ranges: a face stays a face (its points
        spread over the ranges too); a point becomes a line of ``n_points`` points across them."""
        out = []
        for c in self.base.constraints():
            where = c.where
            if isinstance(where, Points):
                raise ProblemError(
                    f"problem.conditioned: constraint {c.name!r} of {type(self.base).__name__} is on given points "
                    f"(observed at one parameter value), which a conditioned problem cannot place across its "
                    f"parameter ranges; drop problem.conditioned or the constraint"
                )
            if isinstance(where, Point):
                where = Points(self._across_ranges(where.coords, c.n_points))
            elif not isinstance(where, Face):
                raise ProblemError(f"problem.conditioned: constraint {c.name!r}: unsupported region {where!r}")
            out.append(dataclasses.replace(c, where=where, residual=self._per_point(c.residual)))
        return out

    def _across_ranges(self, coords: tuple[float, ...], n_points: int) -> Tensor:
        """``coords`` of the base's inputs joined with a grid over the parameter ranges of about
        ``n_points`` points (``n_points^(1/k)`` per parameter): [n, dim] float64."""
        per_axis = max(2, round(n_points ** (1 / len(self.ranges))))
        lines = [np.linspace(lo, hi, per_axis) for lo, hi in self.ranges.values()]
        grid = np.stack(np.meshgrid(*lines, indexing="ij"), axis=-1).reshape(-1, len(lines))
        fixed = np.broadcast_to(np.asarray(coords, dtype=np.float64), (grid.shape[0], len(coords)))
        return torch.from_numpy(np.concatenate([fixed, grid], axis=1))


def _range(name: str, value: Any) -> tuple[float, float]:
    where = f"problem.conditioned.{name}"
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ProblemError(f"{where}: give the parameter's range as [lo, hi], got {value!r}")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ProblemError(f"{where}: the range [lo, hi] must be two numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ProblemError(f"{where}: the range must be finite, got {value!r}")
    if not lo < hi:
        raise ProblemError(f"{where}: empty range [{lo:g}, {hi:g}]; give [lo, hi] with lo < hi")
    return lo, hi


def condition(base: Problem, conditioned: Mapping[str, Any]) -> ConditionedProblem:
    """``base`` conditioned on the parameters of ``conditioned`` (name -> [lo, hi], from
    ``problem.conditioned``). Raises :class:`ProblemError` naming ``problem.conditioned.<name>``
    for an unknown or non-conditionable parameter, a trainable one, or a range that is empty or
    holds a value the problem rejects (each end is checked by re-creating the problem with it)."""
    cls = type(base).__name__
    ranges = {}
    for name, value in conditioned.items():
        where = f"problem.conditioned.{name}"
        if name not in base.parameter_names():
            raise ProblemError(f"{where}: {cls} has no parameter {name!r}; its parameters are {base.parameter_names()}")
        if name not in base.conditionable:
            raise ProblemError(
                f"{where}: {cls} cannot be conditioned on {name!r} (its methods read it as a plain number); "
                f"conditionable parameters of {cls}: {list(base.conditionable) or 'none'} (a problem lists them "
                f"in `conditionable`)"
            )
        if name in base.trainable:
            raise ProblemError(f"{where}: {name!r} is a trainable parameter of {cls}; it cannot also be an input")
        ranges[name] = _range(name, value)
        for end in ranges[name]:
            try:
                dataclasses.replace(base, **{name: end})
            except ProblemError as err:
                raise ProblemError(f"{where}: the range end {end:g} is not a valid value: {err}") from None
    if not ranges:
        raise ProblemError("problem.conditioned: name at least one parameter and its range, e.g. {omega: [5, 15]}")
    # The base keeps a mid-range value between calls, so that nothing reads a stale config value.
    middle = {name: (lo + hi) / 2 for name, (lo, hi) in ranges.items()}
    problem = ConditionedProblem(dataclasses.replace(base, **middle), ranges)
    problem.check()
    return problem
