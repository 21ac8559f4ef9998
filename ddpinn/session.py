"""One run, from a config to a trained model: set up the process (launcher, communicator,
device, threads), build the experiment and the layout, train, tear down.

Defines :func:`run_training` and :func:`evaluate_run`, used by the CLI and the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpinn.build import Experiment, build_experiment, resolve_device
from ddpinn.config import Config, load_config
from ddpinn.parallel.comm import Communicator, LocalComm
from ddpinn.parallel.env import DistEnv, detect_env
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.perf import set_threads, tune_cpu_allocator
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
    finally:
        comm.close()


def run_training(cfg: Config, *, base_dir: Path | None = None, resume: bool = False, quiet: bool = False) -> TrainingResult:
    exp = build_experiment(cfg, base_dir)
    with open_session(cfg) as session:
        comm, device = session.comm, session.device
        layout = make_layout(exp, comm.world_size)
        if comm.rank == 0 and not quiet:
            print(
                f"ddpinn: {cfg.problem.name}, {exp.decomposition.describe()}, {cfg.run.dtype} on {device}; "
                f"{layout.describe()}; run directory {cfg.run_dir}",
                flush=True,
            )
        trainer = Trainer(exp, comm=comm, layout=layout, device=device, run_dir=cfg.run_dir, quiet=quiet)
        return trainer.train(resume=resume)


def evaluate_run(run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Reload a run's checkpoint and recompute its test errors (and results.h5, plots)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", [*(overrides or []), f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}"])
    exp = build_experiment(cfg)
    with open_session(cfg) as session:
        comm, device = session.comm, session.device
        layout = make_layout(exp, comm.world_size)
        trainer = Trainer(exp, comm=comm, layout=layout, device=device, run_dir=run_dir, quiet=comm.rank != 0)
        from ddpinn.train import checkpoint as ckpt_io

        checkpoint = ckpt_io.load_checkpoint(run_dir / "checkpoint.h5")
        ckpt_io.restore(checkpoint, trainer.param_groups, None)
        test = trainer.batches.test_set()
        errors = trainer.evaluate(test)
        return {"step": checkpoint.step, "errors": errors.as_dict() if errors else None}
