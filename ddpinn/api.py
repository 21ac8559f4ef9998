"""Using a trained model from Python: :func:`load` a run directory, then :meth:`TrainedModel.predict`.

Defines :func:`load`, :class:`TrainedModel` and :class:`PredictError`. Used by ``ddpinn export``
(:mod:`ddpinn.io.export`), the examples and the tests. Example::

    import numpy as np
    import ddpinn

    model = ddpinn.load("runs/poisson2d_L4_quick")        # any rank count wrote it
    x = np.random.default_rng(0).uniform(0, 1, (1000, 2))   # [n, 2]: columns model.inputs ('x', 'y')
    u = model.predict(x)                                    # [1000, 1]: columns model.outputs ('u',)
    d = model.predict(x, derivatives=["u_xx", "u_yy"])      # {"u_xx": [1000], "u_yy": [1000]}
    err = np.abs(u - model.exact(x)).max()                  # problems with an exact solution

Rules of :meth:`TrainedModel.predict`:

* **Points** ``x``: ``[n, dim]`` (a 1-D array is n points of a one-input model), NumPy, a list or a
  torch tensor; the columns are the inputs in the order of :attr:`TrainedModel.inputs`.
  Every point must lie in the domain box (within 1e-12 of its length per axis): the FBPINN
  windows cover the domain and little more, so outside it the model is not defined; such
  points, a wrong number of columns and NaN or infinite values raise :class:`PredictError`.
* **Precision**: the model is evaluated in the run's dtype (``run.dtype``, float32 unless the
  run chose float64), exactly as the trainer evaluated it. NumPy (or list) in: float64 NumPy out;
  torch in: a tensor of the run's dtype on ``x``'s device. No gradients are tracked.
* **Batching**: at most ``batch_size`` points are evaluated at a time, so a million points never
  build one huge batch (each chunk's batch takes about 0.5 KB per point at P4 L = 7).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpinn.build import Experiment, build_experiment, resolve_device
from ddpinn.config import Config, ConfigError, load_config
from ddpinn.geometry import Box
from ddpinn.jets import D, JetSpec, MultiIndex
from ddpinn.model.batch import build_batch
from ddpinn.model.fbpinn import FBPINN
from ddpinn.model.trainables import TrainableParameters
from ddpinn.problems import Problem
from ddpinn.train import checkpoint as ckpt_io
from ddpinn.train.checkpoint import CheckpointError, load_checkpoint
from ddpinn.train.resume import check_same_model, find_resume_point

__all__ = ["DEFAULT_BATCH_SIZE", "PredictError", "TrainedModel", "load"]

DEFAULT_BATCH_SIZE = 65_536
"""Points per evaluated chunk: the trainer's default test chunk (``sampling.test_chunk``)."""

_DOMAIN_TOLERANCE = 1e-12
"""How far (relative to an axis's length) a point may lie outside the domain box: round-off only."""

Points = np.ndarray | torch.Tensor | Sequence


class PredictError(ValueError):
    """Points or derivative names that the model cannot evaluate; the message names the argument."""


@dataclass(frozen=True)
class _Derivative:
    """One requested derivative: its key in the result, output column and multi-index."""

    name: str
    output: int
    index: MultiIndex


class TrainedModel:
    """A trained FBPINN with every subdomain on one process, ready to evaluate anywhere in its domain.

    Built by :func:`load`. ``experiment``: the run's rebuilt :class:`~ddpinn.build.Experiment`;
    ``network``: the FBPINN holding all subdomains (parameters from the checkpoint, frozen);
    ``parameters``: the learned problem parameters (``trainable``), name -> value;
    ``step``: the training step the checkpoint was written at; ``checkpoint``: its path.
    """

    def __init__(
        self, experiment: Experiment, network: FBPINN, *, parameters: dict[str, float], step: int,
        checkpoint: Path, device: torch.device,
    ) -> None:
        self.experiment = experiment
        self.network = network
        self.parameters = dict(parameters)
        self.step = step
        self.checkpoint = checkpoint
        self.device = device

    # ------------------------------------------------------------------ what the model is
    @property
    def config(self) -> Config:
        """The run's resolved config (``RUN_DIR/config.yaml``)."""
        return self.experiment.cfg

    @property
    def problem(self) -> Problem:
        """The problem instance, its ``trainable`` parameters set to the learned values."""
        return self.experiment.problem

    @property
    def inputs(self) -> tuple[str, ...]:
        """Input axis names, the column order of ``x``: ``('x', 't')``."""
        return tuple(self.problem.inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output field names, the column order of a prediction: ``('u',)``."""
        return tuple(self.problem.outputs)

    @property
    def domain(self) -> Box:
        """The domain box, ``lo`` and ``hi`` per input."""
        return self.experiment.decomposition.domain

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model is evaluated in (the run's ``run.dtype``)."""
        return self.experiment.dtype

    @property
    def true_parameters(self) -> dict[str, float]:
        """The true values of the learned parameters, where the problem knows them (else empty)."""
        return dict(self.problem.true_parameters())

    @property
    def has_exact(self) -> bool:
        """Whether the problem has an exact (or reference) solution for :meth:`exact`."""
        centre = torch.as_tensor(self.domain.centre[None, :], dtype=torch.float64)
        return self.problem.exact(centre) is not None

    def __repr__(self) -> str:
        learned = "".join(f", {k} = {v:.6g}" for k, v in self.parameters.items())
        return (
            f"TrainedModel({self.config.problem.name}: inputs {list(self.inputs)} -> outputs {list(self.outputs)}, "
            f"{self.experiment.decomposition.describe()}, {self.config.run.dtype} on {self.device}, "
            f"step {self.step}{learned}; {self.checkpoint})"
        )

    # ------------------------------------------------------------------ evaluation
    def predict(
        self, x: Points, derivatives: Sequence[str | D] | str | D | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Any:
        """The model at points ``x`` ([n, dim], see the module docstring for the rules).

        Without ``derivatives``: the outputs, [n, n_out]. With ``derivatives`` (names as the
        problem's :class:`~ddpinn.jets.D` names, ``"u"``, ``"u_x"``, ``"u_xt"`` in any axis order,
        or ``D`` objects; any order, not only those the problem declares): a dict from each
        name as given (a ``D``'s :attr:`~ddpinn.jets.D.name`) to its values, [n].
        """
        points, like = self._points(x, "predict")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise PredictError(f"predict: batch_size must be a whole number >= 1, got {batch_size!r}")
        wanted = None if derivatives is None else self._derivatives(derivatives)
        dim = len(self.inputs)
        spec = JetSpec.closure(dim, [d.index for d in wanted or []])
        columns = [(0, k) for k in range(len(self.outputs))] if wanted is None else [
            (spec.row(d.index), d.output) for d in wanted
        ]
        pieces = [self._evaluate(points[start:start + batch_size], spec, columns)
                  for start in range(0, points.shape[0], batch_size)]
        values = torch.cat(pieces) if pieces else torch.zeros(0, len(columns), dtype=self.dtype)
        if wanted is None:
            return like(values)
        return {d.name: like(values[:, i]) for i, d in enumerate(wanted)}

    def exact(self, x: Points) -> Any:
        """The problem's exact (or reference) solution at ``x``: [n, n_out], returned like
        :meth:`predict` returns values (float64 for NumPy input). Raises :class:`PredictError`
        when the problem has none."""
        points, like = self._points(x, "exact")
        values = self.problem.exact(torch.from_numpy(points))
        if values is None:
            raise PredictError(f"exact: problem {self.config.problem.name!r} has no exact solution")
        return like(values.detach().double().reshape(points.shape[0], -1))

    @torch.no_grad()
    def _forward(self, batch) -> torch.Tensor:
        return self.network(batch)

    def _evaluate(self, points: np.ndarray, spec: JetSpec, columns: list[tuple[int, int]]) -> torch.Tensor:
        """The jet rows/outputs ``columns`` at ``points`` [m, dim]: [m, len(columns)] (run dtype, CPU)."""
        exp = self.experiment
        # Built outside no_grad: the hard constraint's jets are taken by autograd.
        batch = build_batch(exp.problem, exp.decomposition, exp.window, spec, {"x": points},
                            dtype=exp.dtype, device=self.device)
        jets = self._forward(batch)  # [m, J, n_out]
        return torch.stack([jets[:, row, out] for row, out in columns], dim=1).cpu()

    # ------------------------------------------------------------------ argument checks
    def _points(self, x: Points, where: str):
        """``x`` as float64 [n, dim] NumPy after the checks, and a function that converts a
        float result back to the kind of ``x`` (NumPy float64, or torch on ``x``'s device)."""
        names, dim = list(self.inputs), len(self.inputs)
        if isinstance(x, torch.Tensor):
            device = x.device

            def like(values: torch.Tensor) -> torch.Tensor:
                return values.to(device=device, dtype=self.dtype)

            array = None if x.is_complex() else x.detach().cpu().double().numpy()
        else:
            def like(values: torch.Tensor) -> np.ndarray:
                return values.double().numpy()

            array = np.asarray(x)
            array = array.astype(np.float64) if np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array) else None
        if array is None:
            raise PredictError(f"{where}: x must hold real numbers, got {getattr(x, 'dtype', type(x).__name__)}")
        if array.ndim == 1 and dim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != dim:
            got = f"{array.shape[1]} columns" if array.ndim == 2 else f"shape {list(array.shape)}"
            one = "; for one point pass x[None, :]" if array.ndim == 1 and array.shape[0] == dim else ""
            raise PredictError(f"{where}: x has {got}; this model's inputs are {names} (x: [n, {dim}]){one}")
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PredictError(
                f"{where}: x has NaN or infinite values in {int(bad.sum())} row(s), first row {row}: {array[row].tolist()}"
            )
        lo, hi = np.asarray(self.domain.lo), np.asarray(self.domain.hi)
        slack = _DOMAIN_TOLERANCE * (hi - lo)
        outside = ((array < lo - slack) | (array > hi + slack)).any(axis=1)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            bounds = ", ".join(f"{n} in [{a:g}, {b:g}]" for n, a, b in zip(names, lo, hi))
            raise PredictError(
                f"{where}: {int(outside.sum())} point(s) of x lie outside the domain ({bounds}), first row {row}: "
                f"{array[row].tolist()}; the subdomain windows cover only the domain, so the model is not defined "
                "there: keep the points inside it"
            )
        return np.ascontiguousarray(array), like

    def _derivatives(self, wanted: Sequence[str | D] | str | D) -> list[_Derivative]:
        if isinstance(wanted, (str, D)):
            wanted = [wanted]
        return [self._derivative(item) for item in wanted]

    def _derivative(self, item: str | D) -> _Derivative:
        inputs, outputs = list(self.inputs), list(self.outputs)
        example = D(outputs[0], inputs[0], inputs[0]).name
        hint = (f"names are an output {outputs} followed by '_' and input names {inputs}, e.g. "
                f"{outputs[0]!r} or {example!r} (or pass D({outputs[0]!r}, {inputs[0]!r}, {inputs[0]!r}))")
        if isinstance(item, D):
            if item.field not in outputs or any(a not in inputs for a in item.axes):
                raise PredictError(f"predict: unknown derivative {item!r}; {hint}")
            return _Derivative(item.name, outputs.index(item.field), item.multi_index(inputs))
        if not isinstance(item, str):
            raise PredictError(f"predict: derivatives must be names or D objects, got {item!r}")
        for k, field in enumerate(outputs):
            if item == field:
                return _Derivative(item, k, ())
            if item.startswith(f"{field}_"):
                axes = _split_axes(item[len(field) + 1:], inputs)
                if axes is not None:
                    return _Derivative(item, k, D(field, *axes).multi_index(inputs))
        raise PredictError(f"predict: unknown derivative {item!r}; {hint}")


def _split_axes(text: str, inputs: list[str]) -> tuple[str, ...] | None:
    """``text`` as a sequence of input names (``"xxt"`` -> x, x, t; names may be longer than
    one letter), or None if it is not one."""
    if not text:
        return None
    for name in inputs:
        if text == name:
            return (name,)
        if text.startswith(name):
            rest = _split_axes(text[len(name):], inputs)
            if rest is not None:
                return (name, *rest)
    return None


def load(run_dir: str | Path, *, device: str | torch.device = "cpu", checkpoint: str | Path | None = None) -> TrainedModel:
    """The trained model of the run in ``run_dir``, every subdomain on this one process.

    The experiment is rebuilt from ``run_dir/config.yaml`` (a user's ``file.py:Class`` problem
    is found by the absolute path the resolved config records, else relative to ``run_dir``),
    and the parameters are read from ``checkpoint`` (default ``run_dir/checkpoint.h5``, or
    ``checkpoint.prev.h5`` with a warning when the latest is damaged), whatever number of ranks
    wrote it. ``device``: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.

    Raises :class:`~ddpinn.config.ConfigError` (no run directory or config, or a config that no
    longer describes the checkpoint's model) and :class:`~ddpinn.train.checkpoint.CheckpointError`
    (no checkpoint yet, or a damaged one).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"ddpinn.load: run_dir {run_dir} is not a directory; give the directory `ddpinn train` wrote")
    if not config_path.exists():
        raise ConfigError(
            f"ddpinn.load: {config_path} does not exist; run_dir must be a run directory written by `ddpinn train` "
            "(it holds config.yaml and checkpoint.h5)"
        )
    if checkpoint is None:
        if not any((run_dir / name).exists() for name in ("checkpoint.h5", "checkpoint.prev.h5")):
            raise CheckpointError(
                f"ddpinn.load: {run_dir} has no checkpoint.h5 yet; train the run to its first checkpoint "
                "(train.checkpoint_every, and always at the last step), or pass checkpoint=PATH"
            )
        point = find_resume_point(run_dir)
        if point.note:
            warnings.warn(f"ddpinn.load: {point.note}", stacklevel=2)
        ckpt = point.checkpoint
    else:
        ckpt = load_checkpoint(Path(checkpoint))
    cfg = load_config(config_path, [f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}"])
    check_same_model(ckpt, cfg, f"ddpinn.load({str(run_dir)!r})")
    exp = build_experiment(cfg, base_dir=run_dir)
    device = resolve_device(str(device))
    network = exp.make_model(device=device)
    trainables = TrainableParameters(exp.problem, exp.dtype, device)
    every_level = [True] * exp.decomposition.n_levels
    ckpt_io.restore(ckpt, ckpt_io.param_groups(network, trainables, every_level, True), None)
    learned = trainables.current()
    for name, value in learned.items():  # plain floats again: nothing is trained any more
        setattr(exp.problem, name, value)
    network.requires_grad_(False)
    return TrainedModel(exp, network, parameters=learned, step=ckpt.step, checkpoint=ckpt.path, device=device)
