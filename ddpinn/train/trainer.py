"""The training loop: resume, step, log, evaluate, checkpoint. Nothing else.

Defines :class:`Trainer`. The model, the point source, the loss weighting, the optimiser phases
and the outputs are built elsewhere and composed here; the loop itself is the same for one
process and for many, and for every sampling and weighting method.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ddpinn.build import Experiment
from ddpinn.config import to_dict
from ddpinn.discovery import make_alternation
from ddpinn.io.outputs import MetricsLog, Progress, format_duration
from ddpinn.io.rundir import write_text_atomic
from ddpinn.model.batch import EvaluationBatch
from ddpinn.model.trainables import TrainableParameters
from ddpinn.parallel.batching import BatchFactory, TestSet
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.parallel.memory import memory_summary
from ddpinn.parallel.parallelize import parallelize_model
from ddpinn.parallel.sync import GradientSync
from ddpinn.perf import StepFunction
from ddpinn.points import SourceContext, make_point_source
from ddpinn.train import checkpoint as ckpt_io
from ddpinn.train.diagnose import FiniteGuard, NonFiniteLossError
from ddpinn.train.engine import LossEngine
from ddpinn.train.evaluation import TestErrors, evaluate_test_set
from ddpinn.train.finish import write_final_outputs
from ddpinn.train.lbfgs import dot_by_name
from ddpinn.train.objective import Objective
from ddpinn.train.phases import AdamPhase, LBFGSPhase, PhasePlan
from ddpinn.train.points import TrainingPoints
from ddpinn.train.resume import check_same_model, find_resume_point
from ddpinn.train.weighting import WeightingContext, make_weighting

__all__ = ["Trainer", "NonFiniteLossError", "TrainingResult"]


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
        self.exp, self.comm, self.device = exp, comm, device
        self.cfg = exp.cfg
        self.run_dir = Path(run_dir)
        self.is_root = comm.rank == 0
        self.progress = Progress(exp.total_steps, self.is_root and not quiet)
        self.refresh_seconds: list[float] = []
        """Wall time of each point refresh (adaptive sampling: scoring, drawing, new batch)."""
        self.rebalances: list[dict] = []
        """Each re-cut of the blocks: step, imbalance before and after, seconds."""
        self.compile_seconds = 0.0
        self.step_mode = "eager"
        """How the step runs: "eager", "compiled", or "eager (torch.compile failed)"."""
        self._build(layout)

    def _build(self, layout: ParallelLayout) -> None:
        """Everything that depends on who owns what: the model's held subdomains, the batches,
        the weighting, the optimiser phases and the points (built anew when blocks are re-cut)."""
        exp, comm, device = self.exp, self.comm, self.device
        self.layout = layout
        self.__dict__.pop("test_set", None)  # the own test points follow the block
        self.model = parallelize_model(exp.make_model(layout.held(comm.rank), device), layout=layout, comm=comm)
        self.trainables = TrainableParameters(exp.problem, exp.dtype, device)
        self.objective = Objective(exp.problem, exp.spec)
        self.alternation = make_alternation(exp, self.objective, comm, device)  # equation discovery: refits ξ
        self.sync = GradientSync(self.model, layout, comm, extra_replicated=list(self.trainables.parameters()))
        self.batches = BatchFactory(exp, layout, comm, device)
        self.weighting = make_weighting(WeightingContext(
            names=self.objective.names, base=self.objective.base_weights(), exp=exp, comm=comm, device=device,
            dtype=exp.dtype,
        ))
        self.engine = LossEngine(self.model, self.objective, self.weighting, self.sync, None)
        source = make_point_source(SourceContext(exp, self.batches.block, comm))
        # auto: eager first, compiled once the measured eager step shows that compiling pays back.
        self.engine.local = StepFunction(
            self.engine.local_outputs, mode=self.cfg.train.compile, total_steps=exp.total_steps,
            gather=comm.allgather_object, message=self.progress.message,
            changing_shapes=source.changes_points or not exp.schedule.all_active,  # a schedule phase's batch differs
            device_type=device.type,
        )
        self.guard = FiniteGuard(self.model, self.objective, comm, self.run_dir / "checkpoint.h5")
        named = ckpt_io.named_parameters(self.model, self.trainables)
        self.phases = PhasePlan(
            AdamPhase(self.engine, self.sync.params, self.cfg, self.guard, exp.schedule),
            LBFGSPhase(self.engine, named, dot_by_name(self.sync.dot, self.sync.params, named), self.cfg, self.guard),
            self.cfg.train.steps,
        )
        self.points = TrainingPoints(
            source, self.batches, self.engine, self.run_dir / "points" if source.adaptive else None,
            schedule=exp.schedule, on_roles=self.phases.adam.set_roles, message=self.progress.message,
        )
        # Rank 0 writes replicated levels; every rank writes its own subdomains of partitioned ones.
        owned_levels = [layout.is_partitioned(l) or self.is_root for l in range(exp.decomposition.n_levels)]
        self.param_groups = ckpt_io.param_groups(self.model, self.trainables, owned_levels, self.is_root)

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> TrainingResult:
        step = self._start(resume)
        if step >= self.exp.total_steps and (self.run_dir / "summary.json").exists():
            self.progress.message(f"the run is already at step {step}; raise train.steps to continue it")
            summary = json.loads((self.run_dir / "summary.json").read_text())
            errors = TestErrors.from_dict(summary["errors"]) if summary.get("errors") else None
            return TrainingResult(step, summary["loss"], errors, 0.0, 0.0)
        total = self.exp.total_steps
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.is_root, resume_step=step if resume else None)
        errors, terms, t_start = None, None, time.perf_counter()
        self.progress.restart_clock(step)
        while step < total:
            t_refresh = time.perf_counter()
            if self.points.refresh_if_due(step):
                self.refresh_seconds.append(time.perf_counter() - t_refresh)
                self._rebalance_if_needed(step)
            terms = self.train_step(step, self.points.batch)
            step += 1
            self.alternation.after_step(step, self.model, self.points.batch)
            evaluate = step == total or (self.cfg.train.eval_every and step % self.cfg.train.eval_every == 0)
            log = evaluate or step % self.cfg.train.log_every == 0
            save = step == total or (self.cfg.train.checkpoint_every and step % self.cfg.train.checkpoint_every == 0)
            if log or save or step == self.cfg.train.steps or self.points.source.due(step):
                # The host reads the model next (or L-BFGS or new points take over): the only
                # host synchronisation of the finiteness check, before a non-finite step can
                # reach a log line, a checkpoint or the next phase.
                self.guard.raise_if_tripped(step, self.points.batch)
            if evaluate:
                errors = self.evaluate(self.test_set)
            if log:
                self._log(metrics, step, terms, errors if evaluate else None)
            if save:
                self.save(step)
        train_seconds = time.perf_counter() - t_start
        if terms is None:  # a complete checkpoint without a summary (stopped while finishing)
            terms = self.engine.terms(self.points.batch)
            errors = self.evaluate(self.test_set)
        self._finish(self.test_set, errors, step, float(terms.sum()), train_seconds)
        return TrainingResult(step, float(terms.sum()), errors, train_seconds, self.compile_seconds)

    # ------------------------------------------------------------------ steps
    def train_step(self, step: int, batch: EvaluationBatch) -> torch.Tensor:
        """One optimiser step (Adam, or L-BFGS after ``train.steps``); returns the global loss
        terms and raises :class:`NonFiniteLossError` on every rank, before updating any
        parameter, if they are not finite."""
        t0 = time.perf_counter()
        terms = self.phases.at(step).step(step, batch)
        local = self.engine.local
        if local.compiling:
            # This step compiled the forward graph and, at backward(), the backward graph.
            self.compile_seconds = time.perf_counter() - t0
            local.compiled_in(self.compile_seconds)
            self.step_mode = local.mode
            self.progress.pause(self.compile_seconds)
            if self.step_mode == "compiled":
                self.progress.message(f"compiled the training step (forward and backward) in {self.compile_seconds:.1f} s")
        return terms

    # ------------------------------------------------------------------ evaluation and logging
    @functools.cached_property
    def test_set(self) -> TestSet:
        """This process's part of the test grid in chunks, whose batches are built at the first
        evaluation: a large grid costs seconds of set-up that the first training step should not
        wait for."""
        return self.batches.test_set()

    @torch.no_grad()
    def predict(self, batch: EvaluationBatch) -> torch.Tensor:
        """u at the batch's own points: [n_own, n_out]."""
        return self.model(batch)[:, 0, :]

    def evaluate(self, test: TestSet) -> TestErrors | None:
        """The global test errors, chunk by chunk (a collective); None without an exact solution."""
        return evaluate_test_set(test, self.predict, self.comm)

    def _log(self, metrics: MetricsLog, step: int, terms: torch.Tensor, errors: TestErrors | None) -> None:
        values = terms.tolist()
        rate = self.progress.rate(step)
        counts = self.points.counts()
        record = {
            "step": step,
            "loss": float(sum(values)),
            "terms": dict(zip(self.objective.names, values)),
            "lr": self.phases.adam.lr if step <= self.cfg.train.steps else None,
            "steps_per_s": rate,
            "points_per_rank": list(counts.values()),
        }
        if errors is not None:
            record.update(errors.as_dict())
        extra = []
        if self.comm.world_size > 1 or self.points.source.adaptive:
            extra.append(counts.describe() if self.comm.world_size > 1 else f"{sum(counts.values())} points")
        if not self.exp.schedule.all_active:
            pairs = record["active_pairs_per_rank"] = self._active_pairs_per_rank()
            extra.append(f"active pairs/rank {min(pairs)}-{max(pairs)}" if len(pairs) > 1 else f"{pairs[0]} active pairs")
        weights = self.weighting.report()
        if weights:
            record["weighting"] = weights
            extra.append(", ".join(f"{k} {v:.3g}" for k, v in weights.items()))
        if self.exp.problem.trainable:
            record["problem"] = self.trainables.current()
            record["problem_rel_error"] = self._parameter_errors()
            if shown := self.exp.problem.progress_parameters(record["problem"]):
                extra.append(", ".join(
                    f"{k} {v:.4g}" + (f" ({100 * record['problem_rel_error'][k]:.2f}% off)" if k in record["problem_rel_error"] else "")
                    for k, v in shown.items()
                ))
        if equation := self.alternation.log(record):
            extra.append(equation)
        metrics.write(record)
        self.progress.line(step, record["loss"], rate, errors.as_dict() if errors else None, " | ".join(extra))

    def _active_pairs_per_rank(self) -> list[int]:
        """(point, subdomain) pairs each rank trains per step in the current schedule phase (its
        batch covers the active subdomains only); a collective, run at log steps."""
        local = torch.zeros(self.comm.world_size, dtype=torch.float64)
        local[self.comm.rank] = self.points.batch.n_pairs
        return [int(v) for v in self.comm.all_reduce_sum(local).tolist()]

    def _parameter_errors(self) -> dict[str, float]:
        truth = self.exp.problem.true_parameters()
        return {k: abs(v - truth[k]) / abs(truth[k]) for k, v in self.trainables.current().items() if truth.get(k)}

    # ------------------------------------------------------------------ checkpoints and outputs
    def _start(self, resume: bool) -> int:
        checkpoint = None
        if resume:
            point = find_resume_point(self.run_dir)
            checkpoint = point.checkpoint
            check_same_model(checkpoint, self.cfg, f"--resume {self.run_dir}")
            if point.note and self.is_root:
                print(f"ddpinn: warning: {point.note}", file=sys.stderr, flush=True)
        self._restore(checkpoint)
        if self.is_root:
            # On resume too: config.yaml follows the allowed changes (train.steps, say), so that
            # it always describes the run the checkpoints belong to.
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        self.progress.message(f"points: {self.points.source.describe()}; loss weighting: {self.weighting.describe()}")
        if not self.exp.schedule.all_active:
            self.progress.message(f"subdomain schedule: {self.exp.schedule.describe()}")
        if checkpoint is None:
            return 0
        self.progress.message(
            f"resumed from step {checkpoint.step} of {checkpoint.path.name} (written by "
            f"{checkpoint.world_size} rank(s), now {self.comm.world_size})"
        )
        return checkpoint.step

    def _restore(self, checkpoint: ckpt_io.Checkpoint | None) -> None:
        """Parameters, optimiser and weighting state, and points from ``checkpoint`` (any rank
        count), or the initial points when there is none."""
        if checkpoint is not None:
            self.phases.lbfgs.state = ckpt_io.restore(checkpoint, self.param_groups, self.phases.adam.optimizer)
            self.weighting.load_global_state(
                {k.split("/", 1)[1]: v for k, v in checkpoint.arrays.items() if k.startswith("weighting/")}
            )
            self.alternation.load_global_state(checkpoint.arrays)
        note = self.points.start(checkpoint.step if checkpoint else 0, checkpoint)
        if note and self.is_root:
            print(f"ddpinn: warning: {note}", file=sys.stderr, flush=True)

    def _rebalance_if_needed(self, step: int) -> None:
        """Re-cut the blocks at equal point counts when the points have drifted past
        ``parallel.rebalance_above``: the state moves to the new owners by global subdomain id
        and by point position, through a checkpoint written now (what a resume on another rank
        count does)."""
        limit = self.cfg.parallel.rebalance_above
        if self.comm.world_size == 1 or limit is None:
            return
        before = self.points.counts().imbalance
        if before <= limit:
            return
        t0 = time.perf_counter()
        layout = self.layout.recut(self.points.cell_weights())
        self.save(step)
        self.comm.barrier()  # rank 0 has written it (run directories are on a shared file system, as for --resume)
        self._build(layout)
        self._restore(ckpt_io.load_checkpoint(self.run_dir / "checkpoint.h5"))
        after = self.points.counts().imbalance
        seconds = time.perf_counter() - t0
        self.rebalances.append({"step": step, "imbalance_before": before, "imbalance_after": after, "seconds": seconds})
        self.progress.message(
            f"step {step}: points per rank were {before:.2f}x the mean at most (parallel.rebalance_above "
            f"{limit:g}); re-cut the blocks: {after:.2f}x, in {seconds:.2f} s ({self.layout.describe()})"
        )

    def save(self, step: int) -> None:
        note = ckpt_io.save_checkpoint(
            self.run_dir / "checkpoint.h5",
            groups=self.param_groups,
            comm=self.comm,
            step=step,
            epoch=self.points.source.event(step),
            phase=self.phases.at(step - 1).name,
            config_yaml=yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            adam=self.phases.adam.optimizer,
            lbfgs=self.phases.lbfgs.state,
            point_rows=self.points.arrays(),
            global_arrays={**{f"weighting/{k}": v for k, v in self.weighting.global_state().items()},
                           **self.alternation.global_state()},
        )
        if note:
            print(f"ddpinn: warning: {note}", file=sys.stderr, flush=True)

    def _finish(self, test: TestSet, errors: TestErrors | None, step: int, loss: float, seconds: float) -> None:
        counts = self.points.counts()
        summary = {
            "step": step,
            "loss": loss,
            "train_seconds": seconds,
            "compile_seconds": self.compile_seconds,
            "step_mode": self.step_mode,
            "world_size": self.comm.world_size,
            "layout": self.layout.describe(),
            "decomposition": self.exp.decomposition.describe(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "points": self.points.source.describe(),
            "points_per_rank": list(counts.values()),
            "point_imbalance": counts.imbalance,
            "refresh_seconds": self.refresh_seconds,
            "rebalances": self.rebalances,
            "weighting": self.weighting.describe(),
            # Every rank's measured peak beside the memory model's figure for its batch.
            **memory_summary(self.exp, self.points.batch, self.model, self.comm, self.device,
                             compiled=self.step_mode == "compiled"),
        }
        if self.exp.problem.trainable:
            summary["problem"] = self.trainables.current()
            summary["problem_rel_error"] = self._parameter_errors()
        msg = f"done: {step} steps in {format_duration(seconds)}, loss {loss:.3e}"
        if errors:
            msg += f", rel L2 {errors.rel_l2:.3e}, L1 {errors.l1:.3e}, normalised L1 {errors.normalised_l1:.3e}"
        self.progress.message(msg)
        summary.update(self.alternation.summary())
        write_final_outputs(self.run_dir, self.exp, self.comm, test, self.predict, errors, summary, self.progress.message)
