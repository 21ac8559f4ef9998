"""The ``ddpinn`` command line.

    ddpinn train CONFIG [--set key=value ...]     train (any launcher: python, torchrun, mpiexec, srun)
    ddpinn train CONFIG --overwrite               train again into a run directory that holds a run
    ddpinn train --resume RUN_DIR [--set ...]     continue from RUN_DIR/checkpoint.h5 (or .prev.h5)
    ddpinn eval RUN_DIR                           recompute the test errors from the checkpoint
    ddpinn plot RUN_DIR                           redraw RUN_DIR/plots/*.png
    ddpinn check CONFIG [--set ...] [--ranks N]   validate a config and describe the run, no training
    ddpinn problems                               list the registered problems
    ddpinn config [--markdown]                    every config key, its default and meaning

Exit status: 0 success, 2 bad config or input, 3 non-finite loss, 4 communication failure
(also on a rank stopped by another rank's failure), 1 an unexpected error. On N ranks the failing
rank reports its error with its rank id (and, if unexpected, its traceback); rank 0 adds one line
naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddpinn.parallel.failure import RankEnding

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"need a whole number of ranks >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddpinn", description="Distributed multilevel FBPINN training.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a config, or resume a run")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=2000 (repeatable)")
    t.add_argument("--overwrite", action="store_true",
                   help="start again in a run directory that already holds a run: first delete the files ddpinn "
                        "wrote there (checkpoints, metrics, summary, results, plots, config.yaml)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")

    e = sub.add_parser("eval", help="recompute test errors from a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    pl = sub.add_parser("plot", help="redraw a run's plots")
    pl.add_argument("run_dir")

    c = sub.add_parser("check", help="validate a config and describe the run without training")
    c.add_argument("config")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--ranks", type=_positive_int, default=1, help="describe the layout for this many ranks")

    sub.add_parser("problems", help="list the registered problems")

    r = sub.add_parser("config", help="print every config key with its default and documentation")
    r.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/configuration.md")
    return p


def _load(config: str, overrides: list[str]):
    from ddpinn.config import load_config

    return load_config(config, overrides), Path(config).parent


def _train(args) -> int:
    from ddpinn.config import load_config
    from ddpinn.session import run_training

    if args.resume:
        if args.config or args.overwrite:
            raise SystemExit("ddpinn train: --resume RUN_DIR continues a run; it takes no CONFIG and no --overwrite")
        run_dir = Path(args.resume)
        if not any((run_dir / name).exists() for name in ("checkpoint.h5", "checkpoint.prev.h5")):
            from ddpinn.config import ConfigError

            raise ConfigError(f"--resume: {run_dir / 'checkpoint.h5'} does not exist (nor checkpoint.prev.h5)")
        cfg = load_config(
            run_dir / "config.yaml",
            [*args.overrides, f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}"],
        )
        run_training(cfg, resume=True, quiet=args.quiet)
        return 0
    if not args.config:
        raise SystemExit("ddpinn train: give a CONFIG file or --resume RUN_DIR")
    cfg, base = _load(args.config, args.overrides)
    run_training(cfg, base_dir=base, overwrite=args.overwrite, quiet=args.quiet)
    return 0


def _check(args) -> int:
    from ddpinn.build import build_experiment
    from ddpinn.model.batch import build_batch
    from ddpinn.session import make_layout

    from ddpinn.build import resolve_device

    cfg, base = _load(args.config, args.overrides)
    exp = build_experiment(cfg, base)
    device = resolve_device(cfg.run.device)
    groups = exp.training_points(0)
    batch = build_batch(exp.problem, exp.decomposition, exp.window, exp.spec, groups, dtype=exp.dtype)
    layout = make_layout(exp, args.ranks)
    print(f"problem       {cfg.problem.name} {cfg.problem.params or ''} inputs {list(exp.problem.inputs)}")
    print(f"derivatives   {exp.spec.describe(exp.problem.inputs)}")
    print(f"decomposition {exp.decomposition.describe()}, window {cfg.decomposition.window}")
    for l, (level, cov) in enumerate(zip(exp.decomposition.levels, batch.levels)):
        print(f"  level {l + 1}: {'x'.join(map(str, level.shape))} subdomains, {cov.n_pairs} (point, subdomain) pairs, "
              f"{cov.slots} slots per subdomain, network {list(exp.level_sizes[l])}")
    print(f"points        {exp.describe_points()}")
    print(f"              {', '.join(f'{k}: {len(v)}' for k, v in groups.items())}; total pairs {batch.n_pairs}")
    print(f"parameters    {sum(exp.level_parameters(l) for l in range(exp.decomposition.n_levels))}")
    print(f"training      {_training_methods(exp)}")
    print(f"layout        {layout.describe()}")
    print(f"device        {device}, {cfg.run.dtype}")
    return 0


def _training_methods(exp) -> str:
    """The point source and the loss weighting the run will use, as the trainer builds them."""
    import torch

    from ddpinn.geometry import Block
    from ddpinn.parallel.comm import LocalComm
    from ddpinn.points import SourceContext, make_point_source
    from ddpinn.train.objective import Objective
    from ddpinn.train.weighting import WeightingContext, make_weighting

    dom = exp.decomposition.domain
    source = make_point_source(SourceContext(exp, Block(tuple(dom.lo), tuple(dom.hi), (True,) * dom.dim), LocalComm()))
    objective = Objective(exp.problem, exp.spec)
    weighting = make_weighting(WeightingContext(
        names=objective.names, base=objective.base_weights(), exp=exp, comm=LocalComm(), device=torch.device("cpu"),
        dtype=exp.dtype,
    ))
    return f"points {source.describe()}; loss weighting {weighting.describe()}"


def _problems(_args) -> int:
    from ddpinn.problems import problem_class, registered

    for name in registered():
        cls = problem_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:18s} inputs {','.join(cls.inputs):8s} {doc}")
    return 0


def _rank_report(err: BaseException, known: tuple[int, str] | None, ending: RankEnding) -> str:
    """What rank ``ending.rank`` of a multi-rank job prints about ``err``: the error with its rank,
    the traceback of an unexpected one, or one line naming the peer whose failure stopped it."""
    from ddpinn.parallel.failure import PeerFailedError

    where = f"rank {ending.rank} of {ending.world_size}"
    if isinstance(err, PeerFailedError):
        return f"ddpinn: {where} stopped: {err}"
    if known is None:
        import traceback

        return f"ddpinn: {where} failed with an unexpected error:\n" + "".join(traceback.format_exception(err)).rstrip()
    return f"ddpinn: {known[1]} on {where}: {err}" if str(err) else f"ddpinn: {known[1]} on {where}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ddpinn.config import ConfigError
    from ddpinn.parallel.comm import CommError
    from ddpinn.parallel.env import LaunchError
    from ddpinn.parallel.layout import LayoutError
    from ddpinn.train.checkpoint import CheckpointError
    from ddpinn.train.diagnose import NonFiniteLossError

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            from ddpinn.session import evaluate_run

            print(json.dumps(evaluate_run(Path(args.run_dir), args.overrides), indent=2))
            return 0
        if args.command == "plot":
            from ddpinn.io.plots import plot_run

            for path in plot_run(Path(args.run_dir)):
                print(f"wrote {path}")
            return 0
        if args.command == "check":
            return _check(args)
        if args.command == "config":
            from ddpinn.config_reference import reference_markdown, reference_yaml

            print(reference_markdown() if args.markdown else reference_yaml())
            return 0
        return _problems(args)
    except (Exception, KeyboardInterrupt) as err:
        from ddpinn.parallel.failure import end_process, ending_of

        known = next(((status, label) for kinds, status, label in (
            ((ConfigError, CheckpointError, LayoutError, LaunchError), 2, "error"),
            (NonFiniteLossError, 3, "error"),
            (CommError, 4, "communication error"),
            (KeyboardInterrupt, 130, "interrupted"),
        ) if isinstance(err, kinds)), None)
        ending = ending_of(err)
        if ending is None:  # one process, or an error before the ranks connected
            if known is None:
                raise
            print(f"ddpinn: {known[1]}: {err}" if str(err) else f"ddpinn: {known[1]}", file=sys.stderr)
            return known[0]
        if ending.reports:
            print(_rank_report(err, known, ending), file=sys.stderr)
        end_process(known[0] if known else 1, ending)


if __name__ == "__main__":
    sys.exit(main())
