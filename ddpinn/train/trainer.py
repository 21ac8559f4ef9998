"""The training loop: resume, step, log, evaluate, checkpoint. Nothing else.

Defines :class:`Trainer` and :class:`NonFiniteLossError`. The model, the batches, the gradient
synchronisation and the outputs are built elsewhere and handed in; the loop itself is the same
for one process and for many.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ddpinn.build import Experiment
from ddpinn.config import to_dict
from ddpinn.io.outputs import MetricsLog, Progress, format_duration, write_results
from ddpinn.io.rundir import write_text_atomic
from ddpinn.model.batch import EvaluationBatch
from ddpinn.model.trainables import TrainableParameters
from ddpinn.parallel.batching import BatchFactory, TestSet
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.parallelize import parallelize_model
from ddpinn.parallel.sync import GradientSync
from ddpinn.perf import StepFunction
from ddpinn.train import checkpoint as ckpt_io
from ddpinn.train.diagnose import initial_non_finite_cause
from ddpinn.train.evaluation import TestErrors, test_errors
from ddpinn.train.lbfgs import LBFGS, dot_by_name
from ddpinn.train.objective import Objective
from ddpinn.train.resume import check_same_model, find_resume_point
from ddpinn.train.schedules import learning_rate

__all__ = ["Trainer", "NonFiniteLossError", "TrainingResult"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised on every rank at the same step."""


@dataclass(frozen=True)
class TrainingResult:
    step: int
    loss: float
    errors: TestErrors | None
    train_seconds: float
    compile_seconds: float


class Trainer:
    def __init__(
        self,
        exp: Experiment,
        *,
        comm: Communicator,
        layout: ParallelLayout,
        device: torch.device,
        run_dir: Path,
        quiet: bool = False,
    ) -> None:
        self.exp, self.comm, self.layout, self.device = exp, comm, layout, device
        self.cfg = exp.cfg
        self.run_dir = Path(run_dir)
        self.is_root = comm.rank == 0
        self.model = parallelize_model(exp.make_model(layout.held(comm.rank), device), layout=layout, comm=comm)
        self.trainables = TrainableParameters(exp.problem, exp.dtype, device)
        self.objective = Objective(exp.problem, exp.spec)
        self.sync = GradientSync(self.model, layout, comm, extra_replicated=list(self.trainables.parameters()))
        self.batches = BatchFactory(exp, layout, comm, device)
        o = self.cfg.optimizer
        fused = device.type in ("cpu", "cuda")
        params = self.sync.params
        self.adam = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
        named = ckpt_io.named_parameters(self.model, self.trainables)
        self.lbfgs = LBFGS(named, dot_by_name(self.sync.dot, params, named), self.cfg.lbfgs.history, self.cfg.lbfgs.lr)
        self.progress = Progress(exp.total_steps, self.is_root and not quiet)
        self.compile_seconds = 0.0
        self.step_mode = "eager"
        """How the step runs: "eager", "compiled", or "eager (torch.compile failed)"."""
        self.local_terms = self._choose_step_function()
        """``local_terms(batch)``: this process's contributions to each loss term, [n_terms]."""
        # Rank 0 writes replicated levels; every rank writes its own subdomains of partitioned ones.
        owned_levels = [layout.is_partitioned(l) or self.is_root for l in range(exp.decomposition.n_levels)]
        self.param_groups = ckpt_io.param_groups(self.model, self.trainables, owned_levels, self.is_root)

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> TrainingResult:
        step, epoch = self._start(resume)
        if step >= self.exp.total_steps and (self.run_dir / "summary.json").exists():
            self.progress.message(f"the run is already at step {step}; raise train.steps to continue it")
            summary = json.loads((self.run_dir / "summary.json").read_text())
            errors = TestErrors(**summary["errors"]) if summary.get("errors") else None
            return TrainingResult(step, summary["loss"], errors, 0.0, 0.0)
        batch = self.batches.training_batch(epoch)
        adam_steps, total = self.cfg.train.steps, self.exp.total_steps
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.is_root, resume_step=step if resume else None)
        errors, terms, t_start = None, None, time.perf_counter()
        self.progress.restart_clock(step)
        while step < total:
            if step < adam_steps and self._epoch(step) != epoch:
                epoch = self._epoch(step)
                batch = self.batches.training_batch(epoch)
            terms = self.train_step(step, batch)
            step += 1
            evaluate = step == total or (self.cfg.train.eval_every and step % self.cfg.train.eval_every == 0)
            if evaluate:
                errors = self.evaluate(self.test_set)
            if evaluate or step % self.cfg.train.log_every == 0:
                self._log(metrics, step, terms, errors if evaluate else None)
            if step == total or (self.cfg.train.checkpoint_every and step % self.cfg.train.checkpoint_every == 0):
                self.save(step, epoch)
        train_seconds = time.perf_counter() - t_start
        if terms is None:  # a complete checkpoint without a summary (stopped while finishing)
            terms = self.sync.reduce(self.local_terms(batch).detach()).terms
            errors = self.evaluate(self.test_set)
        self._finish(self.test_set, errors, step, float(terms.sum()), train_seconds)
        return TrainingResult(step, float(terms.sum()), errors, train_seconds, self.compile_seconds)

    # ------------------------------------------------------------------ steps
    def train_step(self, step: int, batch: EvaluationBatch) -> torch.Tensor:
        """One optimiser step (Adam, or L-BFGS after ``train.steps``); returns the global loss
        terms and raises :class:`NonFiniteLossError` on every rank, before updating any
        parameter, if they are not finite."""
        t0 = time.perf_counter()
        terms = self._adam_step(step, batch) if step < self.cfg.train.steps else self._lbfgs_step(batch)
        if self.local_terms.compiling:
            # This step compiled the forward graph and, at backward(), the backward graph.
            self.compile_seconds = time.perf_counter() - t0
            self.local_terms.compiled_in(self.compile_seconds)
            self.step_mode = self.local_terms.mode
            self.progress.pause(self.compile_seconds)
            if self.step_mode == "compiled":
                self.progress.message(f"compiled the training step (forward and backward) in {self.compile_seconds:.1f} s")
        return terms

    def _adam_step(self, step: int, batch: EvaluationBatch) -> torch.Tensor:
        lr = learning_rate(self.cfg.optimizer.lr, self.cfg.optimizer.schedule, step, self.cfg.train.steps)
        for group in self.adam.param_groups:
            group["lr"] = lr
        self.adam.zero_grad(set_to_none=True)
        local = self.local_terms(batch)
        local.sum().backward()
        clip = self.cfg.optimizer.clip_norm
        synced = self.sync.reduce(local.detach(), with_norm=clip is not None)
        terms = synced.terms
        # Before the update, so that a non-finite loss never reaches the parameters.
        self._check_finite(terms, step + 1, batch)
        if clip is not None:
            factor = torch.clamp(clip / (synced.grad_norm + 1e-12), max=1.0)
            for p in self.sync.params:
                if p.grad is not None:
                    p.grad.mul_(factor)
        self.adam.step()
        return terms

    def _lbfgs_step(self, batch: EvaluationBatch) -> torch.Tensor:
        last: list[torch.Tensor] = []

        def closure() -> float:
            self.adam.zero_grad(set_to_none=True)
            local = self.local_terms(batch)
            local.sum().backward()
            terms = self.sync.reduce(local.detach()).terms
            last[:] = [terms]
            return float(terms.sum())

        self.lbfgs.step(closure)
        self._check_finite(last[0], self.cfg.train.steps + 1, batch)
        return last[0]

    def _epoch(self, step: int) -> int:
        every = self.cfg.sampling.resample_every
        return step // every if every else 0

    def _choose_step_function(self) -> StepFunction:
        def local_terms(batch: EvaluationBatch) -> torch.Tensor:
            return self.objective.terms(self.model(batch), batch)

        # auto: eager first, compiled once the measured eager step shows that compiling pays back.
        return StepFunction(
            local_terms, mode=self.cfg.train.compile, total_steps=self.exp.total_steps,
            gather=self.comm.allgather_object, message=self.progress.message,
        )

    # ------------------------------------------------------------------ evaluation and logging
    @functools.cached_property
    def test_set(self) -> TestSet:
        """This process's part of the test grid, built at the first evaluation: a large grid costs
        a second of set-up that the first training step should not wait for."""
        return self.batches.test_set()

    @torch.no_grad()
    def predict(self, batch: EvaluationBatch) -> torch.Tensor:
        """u at the batch's own points: [n_own, n_out]."""
        return self.model(batch)[:, 0, :]

    def evaluate(self, test: TestSet) -> TestErrors | None:
        prediction = self.predict(test.batch)
        if test.exact is None:
            return None
        return test_errors(prediction, test.exact, self.comm)

    def _log(self, metrics: MetricsLog, step: int, terms: torch.Tensor, errors: TestErrors | None) -> None:
        values = terms.tolist()
        rate = self.progress.rate(step)
        record = {
            "step": step,
            "loss": float(sum(values)),
            "terms": dict(zip(self.objective.names, values)),
            "lr": self.adam.param_groups[0]["lr"] if step <= self.cfg.train.steps else None,
            "steps_per_s": rate,
        }
        if errors is not None:
            record.update(errors.as_dict())
        extra = ""
        if self.exp.problem.trainable:
            record["problem"] = self.trainables.current()
            record["problem_rel_error"] = self._parameter_errors()
            extra = ", ".join(
                f"{k} {v:.4g}" + (f" ({100 * record['problem_rel_error'][k]:.2f}% off)" if k in record["problem_rel_error"] else "")
                for k, v in record["problem"].items()
            )
        metrics.write(record)
        self.progress.line(step, record["loss"], rate, errors.as_dict() if errors else None, extra)

    def _parameter_errors(self) -> dict[str, float]:
        truth = self.exp.problem.true_parameters()
        return {k: abs(v - truth[k]) / abs(truth[k]) for k, v in self.trainables.current().items() if truth.get(k)}

    def _check_finite(self, terms: torch.Tensor, step: int, batch: EvaluationBatch) -> None:
        if bool(torch.isfinite(terms).all()):
            return
        bad_terms = [n for n, v in zip(self.objective.names, terms.tolist()) if not np.isfinite(v)]
        if step == 1:
            cause = initial_non_finite_cause(self.model, self.objective, batch, self.comm)
            raise NonFiniteLossError(
                f"non-finite loss at step 1, before any parameter update, in term(s) {bad_terms}: {cause}. "
                f"This comes from the problem's definition, not from training (a division by zero, or a log or "
                f"square root of a negative number, at those points?); no parameter was updated"
            )
        where = self._non_finite_subdomains()
        path = self.run_dir / "checkpoint.h5"
        saved = (
            f"the last checkpoint ({path}, verified when written) is from before this step"
            if path.exists()
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"non-finite loss at step {step} in term(s) {bad_terms}; {where}. Parameters were not updated and "
            f"{saved}; lower optimizer.lr or set optimizer.clip_norm"
        )

    def _non_finite_subdomains(self) -> str:
        local = []
        for level, net in enumerate(self.model.nets):
            for p in net.parameters():
                for tensor, what in ((p, "parameter"), (p.grad, "gradient")):
                    if tensor is None or tensor.numel() == 0:
                        continue
                    bad = ~torch.isfinite(tensor.detach()).reshape(tensor.shape[0], -1).all(dim=1)
                    for i in torch.nonzero(bad).reshape(-1).tolist()[:3]:
                        local.append(f"level {level + 1} subdomain {int(self.model.held[level][i])} ({what})")
        found = sorted(set(sum(self.comm.allgather_object(local), [])))
        return "first non-finite: " + ", ".join(found[:6]) if found else "parameters and gradients are finite"

    # ------------------------------------------------------------------ checkpoints and outputs
    def _start(self, resume: bool) -> tuple[int, int]:
        start, checkpoint = (0, 0), None
        if resume:
            point = find_resume_point(self.run_dir)
            checkpoint = point.checkpoint
            check_same_model(checkpoint, self.cfg, f"--resume {self.run_dir}")
            self.lbfgs.state = ckpt_io.restore(checkpoint, self.param_groups, self.adam)
            if point.note and self.is_root:
                print(f"ddpinn: warning: {point.note}", file=sys.stderr, flush=True)
            start = (checkpoint.step, checkpoint.epoch)
        if self.is_root:
            # On resume too: config.yaml follows the allowed changes (train.steps, say), so that
            # it always describes the run the checkpoints belong to.
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        if checkpoint is not None:
            self.progress.message(
                f"resumed from step {checkpoint.step} of {checkpoint.path.name} (written by "
                f"{checkpoint.world_size} rank(s), now {self.comm.world_size})"
            )
        return start

    def save(self, step: int, epoch: int) -> None:
        note = ckpt_io.save_checkpoint(
            self.run_dir / "checkpoint.h5",
            groups=self.param_groups,
            comm=self.comm,
            step=step,
            epoch=epoch,
            phase="adam" if step <= self.cfg.train.steps else "lbfgs",
            config_yaml=yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            adam=self.adam,
            lbfgs=self.lbfgs.state,
        )
        if note:
            print(f"ddpinn: warning: {note}", file=sys.stderr, flush=True)

    def _finish(self, test: TestSet, errors: TestErrors | None, step: int, loss: float, seconds: float) -> None:
        prediction = self.predict(test.batch).double().cpu().numpy()
        gathered = self.comm.allgather_object(
            (test.x, prediction, None if test.exact is None else test.exact.numpy())
        )
        if not self.is_root:
            return
        summary = {
            "step": step,
            "loss": loss,
            "errors": errors.as_dict() if errors else None,
            "train_seconds": seconds,
            "compile_seconds": self.compile_seconds,
            "step_mode": self.step_mode,
            "world_size": self.comm.world_size,
            "layout": self.layout.describe(),
            "decomposition": self.exp.decomposition.describe(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.exp.problem.trainable:
            summary["problem"] = self.trainables.current()
            summary["problem_rel_error"] = self._parameter_errors()
        (self.run_dir / "summary.json").write_text(json.dumps(_finite_or_null(summary), indent=2) + "\n")
        x, prediction, exact = _assemble_grid(gathered, self.exp.decomposition.domain, self.exp.test_shape())
        write_results(
            self.run_dir / "results.h5",
            x=x,
            prediction=prediction,
            exact=exact,
            grid_shape=self.exp.test_shape(),
            input_names=self.exp.problem.inputs,
            output_names=self.exp.problem.outputs,
            errors=errors.as_dict() if errors else {},
            step=step,
        )
        msg = f"done: {step} steps in {format_duration(seconds)}, loss {loss:.3e}"
        if errors:
            msg += (
                f", rel L2 {errors.rel_l2:.3e}, L1 {errors.l1:.3e}, normalised L1 {errors.normalised_l1:.3e}"
            )
        self.progress.message(msg)
        if self.cfg.run.plots:
            from ddpinn.io.plots import plot_run

            for path in plot_run(self.run_dir):
                self.progress.message(f"  wrote {path}")


def _finite_or_null(value):
    """JSON has no NaN or infinity: write null for them."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return value


def _assemble_grid(parts, domain, shape: tuple[int, ...]):
    """Put every rank's (x, prediction, exact) rows into C-order grid positions."""
    x = np.concatenate([p[0] for p in parts])
    prediction = np.concatenate([p[1] for p in parts])
    exact = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    axes = [np.linspace(domain.lo[a], domain.hi[a], n) if n > 1 else np.array([(domain.lo[a] + domain.hi[a]) / 2])
            for a, n in enumerate(shape)]
    # Test points are the same linspace values as ``axes``, so searchsorted finds them exactly.
    index = tuple(np.clip(np.searchsorted(axes[a], x[:, a]), 0, n - 1) for a, n in enumerate(shape))
    order = np.argsort(np.ravel_multi_index(index, shape), kind="stable")
    return x[order], prediction[order], None if exact is None else exact[order]
