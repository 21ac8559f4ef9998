"""One run, from a config to a trained model: set up the process (launcher, communicator,
device, threads), build the experiment and the layout, train, tear down.

Defines :func:`run_training` and :func:`evaluate_run`, used by the CLI and the tests.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpinn.build import Experiment, build_experiment, resolve_device
from ddpinn.config import Config, load_config
from ddpinn.io.rundir import check_run_directory, clear_run
from ddpinn.parallel.comm import Communicator, LocalComm
from ddpinn.parallel.env import DistEnv, detect_env
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.perf import set_threads, tune_cpu_allocator
from ddpinn.train import checkpoint as ckpt_io
from ddpinn.train.resume import check_same_model, find_resume_point
from ddpinn.train.trainer import Trainer, TrainingResult

__all__ = ["Session", "run_training", "evaluate_run", "open_session", "make_layout"]


@dataclass(frozen=True)
class Session:
    """This process's place in the job: how it was launched, its communicator and its device."""

    env: DistEnv
    comm: Communicator
    device: torch.device


def make_layout(exp: Experiment, world_size: int) -> ParallelLayout:
    """The partition for ``world_size`` ranks (policies from the config or the cost model)."""
    if world_size == 1:
        return ParallelLayout.single(exp.decomposition, exp.cells)
    from ddpinn.parallel.policy import plan_layout

    return plan_layout(exp, world_size)


@contextlib.contextmanager
def open_session(cfg: Config) -> Iterator[Session]:
    """Detect the launcher, open the communicator and pick the device; always closes."""
    env = detect_env(cfg.parallel.launcher)
    device = resolve_device(cfg.run.device, env.local_rank)
    set_threads(cfg.run.threads, env.local_world_size)
    if device.type == "cpu":
        tune_cpu_allocator()
    if env.world_size == 1:
        comm: Communicator = LocalComm()
    else:
        from ddpinn.parallel.backends import open_communicator

        comm = open_communicator(env, cfg.parallel, device)
    try:
        yield Session(env=env, comm=comm, device=device)
    except BaseException as err:
        comm.report_failure(err)  # the other ranks stop now, not at parallel.timeout_s
        raise
    finally:
        comm.close()


def run_training(
    cfg: Config, *, base_dir: Path | None = None, resume: bool = False, overwrite: bool = False, quiet: bool = False
) -> TrainingResult:
    """Train ``cfg`` into ``cfg.run_dir``: a new run (refused if the directory already holds one,
    unless ``overwrite``, which deletes the old run's files once the model is built), or, with
    ``resume``, the run continued from its checkpoint (refused if ``cfg`` defines another model)."""
    # The cheap checks first, on every rank, before any model building.
    check_run_directory(cfg.run.output_dir, cfg.run.name, resume=resume, overwrite=overwrite)
    if resume:
        check_same_model(find_resume_point(cfg.run_dir).checkpoint, cfg, f"--resume {cfg.run_dir}")
    exp = build_experiment(cfg, base_dir)
    with open_session(cfg) as session:
        comm, device = session.comm, session.device
        if overwrite and comm.rank == 0:
            # Every rank has passed its checks (opening the session waits for all of them).
            clear_run(cfg.run_dir)
        layout = make_layout(exp, comm.world_size)
        if comm.rank == 0 and not quiet:
            print(
                f"ddpinn: {cfg.problem.name}, {exp.decomposition.describe()}, {cfg.run.dtype} on {device}; "
                f"{exp.describe_points()}; {layout.describe()}; run directory {cfg.run_dir}",
                flush=True,
            )
        trainer = Trainer(exp, comm=comm, layout=layout, device=device, run_dir=cfg.run_dir, quiet=quiet)
        return trainer.train(resume=resume)


def evaluate_run(run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Reload a run's checkpoint and recompute its test errors, chunk by chunk as in training
    (results.h5 and the plots are left as the run wrote them)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", [*(overrides or []), f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}"])
    # The same choice of checkpoint as --resume: the previous one, with a warning, if the latest is damaged.
    point = find_resume_point(run_dir)
    check_same_model(point.checkpoint, cfg, f"ddpinn eval {run_dir}")
    exp = build_experiment(cfg)
    with open_session(cfg) as session:
        comm, device = session.comm, session.device
        layout = make_layout(exp, comm.world_size)
        trainer = Trainer(exp, comm=comm, layout=layout, device=device, run_dir=run_dir, quiet=comm.rank != 0)
        ckpt_io.restore(point.checkpoint, trainer.param_groups, None)
        if point.note and comm.rank == 0:
            print(f"ddpinn: warning: {point.note}", file=sys.stderr, flush=True)
        errors = trainer.evaluate(trainer.test_set)
        return {"step": point.checkpoint.step, "errors": errors.as_dict() if errors else None}
