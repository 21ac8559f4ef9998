"""The declarative Problem API.

A problem is a dataclass (its fields are the parameters a config may set) that declares its
inputs, outputs and the derivatives its residual reads, and implements a few methods::

    @register("poisson2d")
    @dataclass
    class Poisson2D(Problem):
        frequencies: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
        inputs = ("x", "y")
        derivatives = (D("u", "x", "x"), D("u", "y", "y"))

        def domain(self): return Box((0, 0), (1, 1))
        def residual(self, x, d): return -(d["u_xx"] + d["u_yy"]) - self.source(x)
        def hard_constraint(self, x): return HardConstraint(scale=bubble(x), shift=0.0)
        def exact(self, x): ...

Defined here: :class:`Problem`, :class:`HardConstraint` (u = shift + scale · N),
:class:`Constraint` (soft constraints: boundary, initial and data points with weights), the
regions they live on (:class:`Point`, :class:`Face`, :class:`Points`) and
:class:`Derivatives` (what ``residual`` receives). Used by the trainer and the problem library.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ddpinn.geometry import Box
from ddpinn.jets import D, JetSpec, MultiIndex

__all__ = [
    "Problem",
    "HardConstraint",
    "Constraint",
    "Point",
    "Face",
    "Points",
    "Region",
    "Derivatives",
    "ProblemError",
]


class ProblemError(ValueError):
    """A problem declaration or parameter that cannot work; the message names the field."""


@dataclass(frozen=True)
class HardConstraint:
    """The ansatz ``u = shift + scale · N`` applied to the combined network output N.

    ``scale``, ``shift``: tensors broadcastable to [n_points, n_outputs] (or floats), computed
    from x with differentiable torch operations; their derivatives are taken by autograd once
    per point sampling, never in the training step.
    """

    scale: Tensor | float = 1.0
    shift: Tensor | float = 0.0


@dataclass(frozen=True)
class Point:
    """A single point, e.g. ``Point((0.0,))`` for t = 0."""

    coords: tuple[float, ...]


@dataclass(frozen=True)
class Face:
    """One face of the domain box: ``Face("x", "lo")`` is x = domain.lo[x]."""

    axis: str
    side: str  # "lo" | "hi"

    def __post_init__(self) -> None:
        if self.side not in ("lo", "hi"):
            raise ProblemError(f"Face.side: must be 'lo' or 'hi', got {self.side!r}")


@dataclass(frozen=True, eq=False)
class Points:
    """Given points: ``x`` [n, dim], with optional observed ``values`` [n, k] (a data constraint's
    residual reads them, row-aligned with x, as ``d.data``)."""

    x: Tensor
    values: Tensor | None = None

    def __post_init__(self) -> None:
        if self.values is not None and self.values.shape[0] != self.x.shape[0]:
            raise ProblemError(f"Points: {self.values.shape[0]} values for {self.x.shape[0]} points")


Region = Point | Face | Points


@dataclass(frozen=True, eq=False)
class Constraint:
    """A soft constraint: ``weight · mean(residual(x, d)²)`` over points of ``where``.

    ``residual(x, d)`` sees the same :class:`Derivatives` as the PDE residual; ``derivatives``
    lists what it reads besides the fields. ``n_points`` is used for faces (a grid or random
    sample on the face, following the run's sampling method); points and given point sets use
    their own points.
    """

    name: str
    where: Region
    residual: Callable[[Tensor, Derivatives], Tensor]
    weight: float = 1.0
    derivatives: tuple[D, ...] = ()
    n_points: int = 100

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ProblemError(f"constraint {self.name!r}: weight must be >= 0, got {self.weight}")


class Derivatives:
    """Named access to the jets of u at a set of points: ``d["u_xx"]`` is a [n_points] tensor.

    Built from a jet tensor ``[n_points, J, n_outputs]``. Names follow :attr:`D.name`; mixed
    derivatives may be written in any axis order (``u_xy`` or ``u_yx``).
    """

    def __init__(self, jets: Tensor, names: dict[str, tuple[int, int]], data: Tensor | None = None) -> None:
        self._jets = jets
        self._names = names
        self._data = data

    @property
    def data(self) -> Tensor:
        """Observed values at these points ([n, k]), for constraints on :class:`Points` with values."""
        if self._data is None:
            raise KeyError("d.data: these points carry no observed values (give Points(x, values=...))")
        return self._data

    def __getitem__(self, name: str) -> Tensor:
        try:
            row, out = self._names[name]
        except KeyError:
            raise KeyError(
                f"derivative {name!r} was not declared; declare it in the problem's `derivatives` "
                f"(available: {sorted(self._names)})"
            ) from None
        return self._jets[:, row, out]

    def __contains__(self, name: str) -> bool:
        return name in self._names


class Problem:
    """Base class of PDE problems; subclasses are dataclasses of their parameters.

    Class attributes to declare: ``inputs`` (axis names), ``outputs`` (field names, default
    ``("u",)``), ``derivatives`` (the :class:`D` the residual reads) and optionally
    ``output_mean``/``output_scale`` (the global un-normalisation of every subdomain network's
    output; override with properties when they depend on parameters) and ``trainable`` (names of
    float parameters learnt with the networks, for inverse problems: during training the
    attribute holds a scalar tensor, replicated on every process; use it in residuals and soft
    constraints, not in the hard constraint or the exact solution).

    Conditioned (parametric) inputs: ``conditionable`` names float parameters whose every method
    (residual, hard constraint, constraints' residuals, exact solution, output normalisation)
    also works when the attribute holds a per-point [n] tensor, so that ``problem.conditioned``
    may make them input axes (:mod:`ddpinn.problems.conditioned`). ``parameter_inputs`` names
    inputs that are parameters rather than space or time: they are not decomposed (one subdomain
    spans each, on every level) and the process grid never cuts them; a problem may declare such
    inputs itself and read them from ``x``.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ("u",)
    derivatives: ClassVar[tuple[D, ...]] = ()
    trainable: ClassVar[tuple[str, ...]] = ()
    conditionable: ClassVar[tuple[str, ...]] = ()
    parameter_inputs: ClassVar[tuple[str, ...]] = ()
    output_mean: float = 0.0
    output_scale: float = 1.0

    def domain(self) -> Box:
        raise NotImplementedError

    def residual(self, x: Tensor, d: Derivatives) -> Tensor | tuple[Tensor, ...]:
        """PDE residual(s) at collocation points ``x``: [n] (or a tuple of [n] for systems)."""
        raise NotImplementedError

    def hard_constraint(self, x: Tensor) -> HardConstraint | None:
        """The ansatz u = shift + scale · N, or None for an unconstrained output."""
        return None

    def constraints(self) -> Sequence[Constraint]:
        """Soft constraints (boundary, initial, data); none by default."""
        return ()

    def exact(self, x: Tensor) -> Tensor | None:
        """Exact or reference solution at ``x``: [n, n_outputs], or None if there is none."""
        return None

    def true_parameters(self) -> dict[str, float]:
        """The values of the ``trainable`` parameters behind the exact solution (inverse problems),
        so runs can report how well they were recovered; empty if unknown."""
        return {}

    def progress_parameters(self, values: dict[str, float]) -> dict[str, float]:
        """Which of the ``trainable`` parameters' current ``values`` (name -> value) the progress
        line shows: all by default (metrics.jsonl and summary.json always record all)."""
        return values

    # ----------------------------------------------------------------- derived declarations
    @property
    def dim(self) -> int:
        return len(self.inputs)

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []

    def all_derivatives(self) -> list[D]:
        """Every derivative read by the residual or a constraint (fields themselves included)."""
        wanted = [D(f) for f in self.outputs] + list(self.derivatives)
        for c in self.constraints():
            wanted += list(c.derivatives)
        return wanted

    def jet_spec(self) -> JetSpec:
        """The closed set of multi-indices the model must propagate for this problem."""
        return JetSpec.closure(self.dim, [self._multi_index(dv) for dv in self.all_derivatives()])

    def derivative_names(self, spec: JetSpec) -> dict[str, tuple[int, int]]:
        """Name -> (jet row, output column) for every declared derivative and its axis permutations."""
        names: dict[str, tuple[int, int]] = {}
        for dv in self.all_derivatives():
            index = self._multi_index(dv)
            entry = (spec.row(index), self.outputs.index(dv.field))
            names[dv.name] = entry
            for axes in _permutations(dv.axes):
                names[D(dv.field, *axes).name] = entry
        return names

    def _multi_index(self, dv: D) -> MultiIndex:
        if dv.field not in self.outputs:
            raise ProblemError(
                f"{type(self).__name__}.derivatives: {dv.name!r} refers to field {dv.field!r}, "
                f"but the outputs are {list(self.outputs)}"
            )
        try:
            return dv.multi_index(self.inputs)
        except KeyError as err:
            raise ProblemError(f"{type(self).__name__}.derivatives: {err.args[0]}") from None

    def check(self) -> None:
        """Validate the declaration (names, domain) before any expensive work."""
        cls = type(self).__name__
        if not self.inputs:
            raise ProblemError(f"{cls}.inputs: declare the input axis names, e.g. ('x', 'y')")
        if len(set(self.inputs)) != len(self.inputs) or len(set(self.outputs)) != len(self.outputs):
            raise ProblemError(f"{cls}: input and output names must be unique")
        box = self.domain()
        if box.dim != self.dim:
            raise ProblemError(f"{cls}.domain(): has {box.dim} axes but inputs are {list(self.inputs)}")
        for name in self.trainable:
            if not isinstance(getattr(self, name, None), (int, float)):
                raise ProblemError(f"{cls}.trainable: {name!r} must name a float parameter of the problem")
        for name in self.conditionable:
            if name not in self.parameter_names():
                raise ProblemError(f"{cls}.conditionable: {name!r} must name a parameter of the problem")
        unknown = [name for name in self.parameter_inputs if name not in self.inputs]
        if unknown:
            raise ProblemError(f"{cls}.parameter_inputs: {unknown[0]!r} is not an input {list(self.inputs)}")
        if len(self.parameter_inputs) == self.dim:
            raise ProblemError(f"{cls}.parameter_inputs: every input is a parameter; at least one must be decomposed")
        for c in self.constraints():
            if isinstance(c.where, Face) and c.where.axis not in self.inputs:
                raise ProblemError(f"constraint {c.name!r}: Face axis {c.where.axis!r} is not an input")
            if isinstance(c.where, Points):
                _check_points(c, box, self.inputs)
        self._dry_run_residuals()

    def _dry_run_residuals(self) -> None:
        """Evaluate every residual once on zero jets at a few domain points, so that a residual
        reading an undeclared derivative fails now, not at the first training step."""
        spec = self.jet_spec()
        names = self.derivative_names(spec)
        box = self.domain()
        x = torch.tensor([box.centre.tolist()] * 3, dtype=torch.float64)
        jets = torch.zeros(3, len(spec), len(self.outputs), dtype=torch.float64)
        checks = [("residual", self.residual, None)] + [
            (f"constraint {c.name!r}", c.residual, getattr(c.where, "values", None)) for c in self.constraints()
        ]
        for what, fn, values in checks:
            data = None if values is None else torch.zeros(3, *values.shape[1:], dtype=torch.float64)
            try:
                fn(x, Derivatives(jets, names, data))
            except KeyError as err:
                message = err.args[0] if err.args else str(err)
                raise ProblemError(f"{type(self).__name__} {what}: {message}") from None


def _check_points(c: Constraint, box: Box, inputs: tuple[str, ...]) -> None:
    """Given points (observations) must lie in the domain with finite coordinates and values: a
    point outside it belongs to no process's block and would be dropped silently, and one NaN
    makes every loss NaN."""
    where = c.where
    x = where.x.detach().double().reshape(where.x.shape[0], -1)
    n = x.shape[0]
    if x.shape[1] != len(inputs):
        raise ProblemError(f"constraint {c.name!r}: Points.x has {x.shape[1]} columns for the inputs {list(inputs)}")

    def first(mask: Tensor) -> str:
        i = int(mask.nonzero()[0])
        return f"{int(mask.sum())} of its {n} points (the first: row {i}, x = {x[i].tolist()})"

    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        raise ProblemError(f"constraint {c.name!r}: Points.x: {first(bad)} have NaN or infinite coordinates; remove them")
    lo, hi = torch.tensor(box.lo, dtype=x.dtype), torch.tensor(box.hi, dtype=x.dtype)
    outside = ((x < lo) | (x > hi)).any(dim=1)
    if outside.any():
        raise ProblemError(
            f"constraint {c.name!r}: Points.x: {first(outside)} lie outside the domain "
            f"{dict(zip(inputs, zip(box.lo, box.hi)))}; remove them or widen the domain"
        )
    if where.values is not None:
        bad = ~torch.isfinite(where.values.detach().reshape(n, -1)).all(dim=1)
        if bad.any():
            raise ProblemError(f"constraint {c.name!r}: Points.values: {first(bad)} have NaN or infinite observed values; remove them")


def _permutations(axes: tuple[str, ...]) -> set[tuple[str, ...]]:
    return set(itertools.permutations(axes))


def as_columns(value: Tensor | float, x: Tensor, n_outputs: int) -> Tensor:
    """Broadcast a scalar, a per-point [n] or a [n, n_outputs] value to [n, n_outputs]."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if v.dim() == 1:
        v = v[:, None]
    return v.expand(x.shape[0], n_outputs)
