"""The alternating direction of equation discovery: refit ξ by STRidge between network steps.

Defines :class:`Alternation` (what the trainer calls after each step, and asks for log text,
checkpoint arrays and the summary), :class:`NoAlternation` (the same calls doing nothing, for
every other problem) and :func:`make_alternation`. A fit evaluates the networks' jets at this
rank's own collocation points without gradients, forms Θ [n_own, n_terms] and the target y
[n_own], and all-reduces ΘᵀΘ, Θᵀy, yᵀy and the count in one buffer (float64): every rank then
solves the same normal equations, so ξ is the one-rank result whatever the rank count (to
round-off in the order of the sums). With the problem's ``learn_coefficients``, the last fit
also switches on the gradient training of ξ on its support (the problem's ``learning_on``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ddpinn.discovery.stridge import NormalEquations, SparseFit, stridge
from ddpinn.model.batch import EvaluationBatch
from ddpinn.parallel.comm import Communicator
from ddpinn.problems.base import Derivatives

__all__ = ["Alternation", "NoAlternation", "compare_with_truth", "format_equation", "make_alternation"]

STATE_PREFIX = "discovery/"
"""Checkpoint arrays: ``discovery/xi/<term name>`` (the fitted ξ, one value each),
``discovery/active`` and ``discovery/learning`` (the corrections δ are the problem's trainable
parameters, checkpointed with them)."""


def format_equation(target: str, coefficients: dict[str, float]) -> str:
    """``"u_t = -0.998 u*u_x + 0.00319 u_xx"`` (non-zero terms, 3 significant digits)."""
    text = ""
    for name, value in coefficients.items():
        if not value:
            continue
        term = f"{abs(value):.3g}" + ("" if name == "1" else f" {name}")
        sign = "-" if value < 0 else "+"
        text += f" {sign} {term}" if text else ("-" if value < 0 else "") + term
    return f"{target} = {text or '0'}"


def compare_with_truth(found: dict[str, float], truth: dict[str, float]) -> dict:
    """Relative error of each true term's coefficient (1 when it was missed), the missed terms
    and the extra ones (found, not true): ``{"rel_error": {...}, "missed": [...], "extra": [...]}``."""
    rel = {k: abs(found.get(k, 0.0) - v) / abs(v) for k, v in truth.items() if v}
    return {
        "rel_error": rel,
        "missed": [k for k, v in truth.items() if v and not found.get(k)],
        "extra": [k for k, v in found.items() if v and not truth.get(k)],
    }


class NoAlternation:
    """The trainer's calls for a problem without discovery: nothing to do."""

    def after_step(self, step: int, model, batch: EvaluationBatch) -> None:
        pass

    def log(self, record: dict) -> str:
        return ""

    def global_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_global_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    def summary(self) -> dict:
        return {}


class Alternation(NoAlternation):
    """ξ ← STRidge(Θ, y) after Adam steps ``warmup``, ``warmup + every``, … and ``last_fit`` (or the
    last Adam step).

    ``problem``: an :class:`~ddpinn.problems.library.discovery.EquationDiscovery`, whose
    ``coefficients`` [n_terms], ``residual_on`` (0-d, 0 before the first fit) and ``learning_on``
    (0-d, 1 after the last fit when ξ is then learnt) are replaced by tensors of the run's
    ``dtype`` on ``device`` and updated in place.
    ``derivative_names``: the objective's name -> (jet row, output) map.
    """

    def __init__(self, problem, derivative_names: dict[str, tuple[int, int]], comm: Communicator,
                 adam_steps: int, dtype: torch.dtype, device: torch.device) -> None:
        self.problem, self.names, self.comm, self.adam_steps = problem, derivative_names, comm, adam_steps
        self.terms = problem.candidates.names
        problem.coefficients = torch.zeros(len(self.terms), dtype=dtype, device=device)
        problem.residual_on = torch.zeros((), dtype=dtype, device=device)
        problem.learning_on = torch.zeros((), dtype=dtype, device=device)
        self.last_fit = min(problem.last_fit or adam_steps, adam_steps)
        self.history: list[dict] = []
        """Every fit of this process's run: {"step", "coefficients": {term: value}, "passes"}."""

    # ------------------------------------------------------------------ the fit
    def due(self, step: int) -> bool:
        """Fit after Adam step ``step`` (counted from 1)?"""
        p = self.problem
        return p.warmup <= step <= self.last_fit and ((step - p.warmup) % p.every == 0 or step == self.last_fit)

    def after_step(self, step: int, model, batch: EvaluationBatch) -> None:
        if self.due(step):
            self.fit(step, model, batch)

    @torch.no_grad()
    def normal_equations(self, model, batch: EvaluationBatch) -> NormalEquations:
        """ΘᵀΘ, Θᵀy, yᵀy and the point count over every rank's collocation points (a collective:
        the forward pass exchanges halo values, then one all-reduce)."""
        theta, y = self.library_values(model(batch), batch)
        theta, y = theta.double(), y.double()
        local = torch.cat([(theta.T @ theta).reshape(-1), theta.T @ y, (y @ y).reshape(1),
                           theta.new_full((1,), float(y.shape[0]))])
        total = self.comm.all_reduce_sum(local)
        return NormalEquations.from_flat(total.cpu().numpy(), len(self.terms))

    def library_values(self, jets: Tensor, batch: EvaluationBatch) -> tuple[Tensor, Tensor]:
        """Θ [n_own_collocation, n_terms] and the target y [n_own_collocation] from the jets
        [n_own, J, n_out] at the batch's own points."""
        rows = batch.groups["pde"]
        d = Derivatives(jets[rows], self.names)
        y = d[self.problem.target]
        theta = self.problem.candidates.evaluate(d, y)
        if not self.problem.fit_margin:
            return theta, y
        inside = self.inside_margin(batch.x[rows])
        return theta[inside], y[inside]

    def inside_margin(self, x: Tensor) -> Tensor:
        """[n] bool: the points ``x`` [n, dim] at least ``fit_margin`` × the axis length from
        every edge of the domain."""
        box, margin = self.problem.domain(), self.problem.fit_margin
        lo, hi = torch.as_tensor(box.lo).to(x), torch.as_tensor(box.hi).to(x)
        return ((x >= lo + margin * (hi - lo)) & (x <= hi - margin * (hi - lo))).all(dim=1)

    def fit(self, step: int, model, batch: EvaluationBatch) -> SparseFit:
        p = self.problem
        result = stridge(self.normal_equations(model, batch), p.tolerance, p.ridge)
        p.coefficients.copy_(torch.as_tensor(result.coefficients))
        p.residual_on.fill_(1.0)
        self.history.append({"step": step, "coefficients": self.current(), "passes": result.passes})
        if p.learn_coefficients and step == self.last_fit:
            p.learning_on.fill_(1.0)
        return result

    # ------------------------------------------------------------------ reports and state
    @property
    def active(self) -> bool:
        return bool(self.problem.residual_on)

    def current(self) -> dict[str, float]:
        """The non-zero coefficients by term name (with their learnt corrections)."""
        values = self.problem.effective_coefficients().detach().double().cpu().tolist()
        return {k: v for k, v in zip(self.terms, values) if v}

    def equation(self) -> str:
        if not self.active:
            return f"{self.problem.target} = ? (first fit after step {self.problem.warmup})"
        return format_equation(self.problem.target, self.current())

    def log(self, record: dict) -> str:
        record["discovery"] = {"equation": self.equation(), "coefficients": self.current() if self.active else None}
        return self.equation()

    def global_state(self) -> dict[str, np.ndarray]:
        values = self.problem.coefficients.double().cpu().numpy()
        state = {f"{STATE_PREFIX}xi/{k}": values[i : i + 1].copy() for i, k in enumerate(self.terms)}
        state[f"{STATE_PREFIX}active"] = np.array([float(self.active)])
        state[f"{STATE_PREFIX}learning"] = np.array([float(self.problem.learning_on)])
        return state

    def load_global_state(self, arrays: dict[str, np.ndarray]) -> None:
        """ξ by term name from a checkpoint (a checkpoint without them leaves ξ unfitted)."""
        if f"{STATE_PREFIX}active" not in arrays:
            return
        from ddpinn.train.checkpoint import CheckpointError

        missing = [k for k in self.terms if f"{STATE_PREFIX}xi/{k}" not in arrays]
        if missing:
            raise CheckpointError(
                f"the checkpoint's discovery library lacks the term {missing[0]!r}: problem.params.library, "
                "degree and terms must be those of the run that wrote it"
            )
        values = [float(arrays[f"{STATE_PREFIX}xi/{k}"][0]) for k in self.terms]
        self.problem.coefficients.copy_(torch.as_tensor(values))
        self.problem.residual_on.fill_(float(arrays[f"{STATE_PREFIX}active"][0]))
        self.problem.learning_on.fill_(float(arrays.get(f"{STATE_PREFIX}learning", [0.0])[0]))

    def summary(self) -> dict:
        p = self.problem
        found = self.current() if self.active else {}
        out = {"target": p.target, "library": self.terms, "equation": self.equation(), "coefficients": found,
               "fits": self.history, "learnt": bool(p.learning_on)}
        if p.truth:
            out["truth"] = dict(p.truth)
            out.update(compare_with_truth(found, p.truth))
        return {"discovery": out}


def make_alternation(exp, objective, comm: Communicator, device: torch.device) -> NoAlternation:
    """An :class:`Alternation` for a discovery problem, else a :class:`NoAlternation`."""
    from ddpinn.problems.library.discovery import EquationDiscovery

    if not isinstance(exp.problem, EquationDiscovery):
        return NoAlternation()
    return Alternation(exp.problem, objective.derivative_names, comm, exp.cfg.train.steps, exp.dtype, device)
