"""The ``ddpinn`` command line.

    ddpinn train CONFIG [--set key=value ...]     train (any launcher: python, torchrun, mpiexec, srun)
    ddpinn train CONFIG --overwrite               train again into a run directory that holds a run
    ddpinn train --resume RUN_DIR [--set ...]     continue from RUN_DIR/checkpoint.h5 (or .prev.h5)
    ddpinn eval RUN_DIR                           recompute the test errors from the checkpoint
    ddpinn plot RUN_DIR                           redraw RUN_DIR/plots/*.png
    ddpinn export RUN_DIR --format xdmf|npz [--out PATH] [--n N | --n N1,N2,...]
                                                  the solution on a grid for ParaView/VisIt or NumPy:
                                                  results.h5's test grid, or the model on a new grid
    ddpinn check CONFIG [--set ...] [--ranks N] [--device-memory 80GB]
                                                  validate a config and describe the run (per-rank
                                                  work and memory), no training
    ddpinn problems                               list the registered problems
    ddpinn config [--markdown]                    every config key, its default and meaning

Exit status: 0 success, 2 bad config or input, 3 non-finite loss, 4 communication failure
(also on a rank stopped by another rank's failure), 5 ``check --device-memory``: a rank's
estimated memory exceeds the given size, 1 an unexpected error. On N ranks the failing
rank reports its error with its rank id (and, if unexpected, its traceback); rank 0 adds one line
naming it.
"""

from __future__ import annotations

import argparse
import json
import re
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


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
DOES_NOT_FIT = 5
"""Exit status of ``ddpinn check --device-memory`` when a rank's estimate exceeds the size."""


def _memory_size(text: str) -> int:
    """Bytes from a size such as ``80GB`` (10^9), ``512MB``, ``1.5GiB`` (2^30) or ``4096``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"need a positive size with a unit such as 80GB, 512MB or 1.5GiB (KB/MB/GB/TB are powers of 1000, "
            f"KiB/MiB/GiB/TiB of 1024), got {text!r}"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


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

    x = sub.add_parser("export", help="write a run's solution on a grid as XDMF+HDF5 (ParaView, VisIt) or npz")
    x.add_argument("run_dir")
    x.add_argument("--format", required=True, choices=["xdmf", "npz"], dest="fmt",
                   help="xdmf: an .xdmf file and an .h5 beside it (2-D and 3-D grids, time series over an input 't'); "
                        "npz: NumPy arrays (any dimension)")
    x.add_argument("--out", metavar="PATH", help="the file to write (default RUN_DIR/export/solution.xdmf or .npz)")
    x.add_argument("--n", type=_grid_counts, metavar="N or N1,N2,...",
                   help="evaluate the checkpoint's model on a new grid of N points per axis (or one count per "
                        "axis) instead of reading the test grid of results.h5")
    x.add_argument("--device", default="cpu", help="where to evaluate the model with --n (cpu, cuda, auto)")

    c = sub.add_parser("check", help="validate a config and describe the run without training")
    c.add_argument("config")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--ranks", type=_positive_int, default=1, help="describe the layout for this many ranks")
    c.add_argument("--device-memory", type=_memory_size, metavar="SIZE",
                   help="memory of one device, e.g. 80GB or 1.5GiB: print each rank's estimated memory and exit "
                        f"with status {DOES_NOT_FIT} if the largest does not fit")

    sub.add_parser("problems", help="list the registered problems")

    r = sub.add_parser("config", help="print every config key with its default and documentation")
    r.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/configuration.md")
    return p


def _grid_counts(text: str) -> tuple[int, ...]:
    from ddpinn.io.export import ExportError, grid_counts

    try:
        return grid_counts(text)
    except ExportError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    """Describe the run from counts (:mod:`ddpinn.parallel.workload`): no batch, no model."""
    from ddpinn.build import build_experiment, resolve_device
    from ddpinn.config import ConfigError
    from ddpinn.parallel.workload import EvaluatedRows, workload
    from ddpinn.session import make_layout

    cfg, base = _load(args.config, args.overrides)
    exp = build_experiment(cfg, base)
    try:
        device = str(resolve_device(cfg.run.device))
    except ConfigError:  # a GPU run described on a machine without one (a login node, say)
        device = f"{cfg.run.device} (not available here)"
    layout = make_layout(exp, args.ranks)
    work = workload(exp, layout)
    pairs = work.pairs_by_level
    expected = "" if work.exact else " (expected: random points)"
    print(f"problem       {cfg.problem.name} {cfg.problem.params or ''} inputs {list(exp.problem.inputs)}")
    print(f"derivatives   {exp.spec.describe(exp.problem.inputs)}")
    if exp.finite_difference is not None:
        per_point = EvaluatedRows.of(exp).per_point
        print(f"              by finite differences (model.fd_step {cfg.model.fd_step}): {per_point} value-only "
              "stencil points per interior point; the pairs and halo below count stencil points")
    print(f"decomposition {exp.decomposition.describe()}, window {cfg.decomposition.window}")
    for l, level in enumerate(exp.decomposition.levels):
        print(f"  level {l + 1}: {'x'.join(map(str, level.shape))} subdomains, {pairs[l]} (point, subdomain) pairs, "
              f"network {list(exp.level_sizes[l])}")
    own = {name: sum(r.own_points[name] for r in work.ranks) for name in work.ranks[0].own_points}
    print(f"points        {exp.describe_points()}")
    print(f"              {', '.join(f'{k}: {v}' for k, v in own.items())}; total pairs {work.total_pairs}{expected}")
    print(f"parameters    {sum(exp.level_parameters(l) for l in range(exp.decomposition.n_levels))}")
    print(f"training      {_training_methods(exp)}")
    print(f"layout        {layout.describe()}")
    if args.ranks > 1:
        for line in _per_rank_lines(work):
            print(line)
    if not exp.schedule.all_active:
        for line in _schedule_lines(exp, layout):
            print(line)
    print(f"device        {device}, {cfg.run.dtype}")
    if args.device_memory is not None:
        return _memory_report(exp, work, args.device_memory, device.split(":")[0].split(" ")[0])
    return 0


def _spread(values: list[int]) -> str:
    mean = sum(values) / len(values)
    return f"{min(values)}-{max(values)} (max/mean {max(values) / mean if mean else 1.0:.2f})"


def _per_rank_lines(work) -> list[str]:
    """Per-rank work: pairs, points and halo points (min-max), and the busiest rank's levels."""
    busiest = work.busiest()
    levels = ", ".join(f"L{l + 1} {p}" for l, p in busiest.pairs_by_level.items())
    return [
        f"per rank      pairs {_spread([r.pairs for r in work.ranks])}; own points {_spread([r.n_own for r in work.ranks])}; "
        f"halo points {_spread([r.halo_points for r in work.ranks])}; parameters held "
        f"{_spread([r.parameters for r in work.ranks])}",
        f"              busiest rank {busiest.rank}: pairs {levels}",
    ]


def _schedule_lines(exp, layout) -> list[str]:
    """The schedule, its transitions, and per-rank work per step at its first, busiest and last
    phases (:func:`ddpinn.parallel.phase_work.schedule_work`: counted from the roles)."""
    from ddpinn.parallel.phase_work import schedule_work

    schedule = exp.schedule
    marks = schedule.transitions()
    shown = ", ".join(map(str, marks[:12])) + (f", ... ({len(marks)} in all)" if len(marks) > 12 else "")
    lines = [f"schedule      {schedule.describe()}",
             f"              transitions at steps {shown or 'none'}; per rank and step, min-max over ranks:"]
    labels: dict[int, list[str]] = {}
    phases = {}
    for label, phase in schedule_work(exp, layout).items():
        labels.setdefault(id(phase), []).append(label)
        phases[id(phase)] = phase
    for key, phase in sorted(phases.items(), key=lambda kv: kv[1].start):
        ranks = phase.ranks
        n_levels = len(phase.active)
        roles = ", ".join(f"L{l + 1} {phase.active[l]} active/{phase.fixed[l]} fixed" for l in range(n_levels))
        active = ", ".join(f"L{l + 1} {_range([r.active_pairs_by_level[l] for r in ranks])}" for l in range(n_levels))
        fixed = ", ".join(f"L{l + 1} {_range([r.fixed_pairs_by_level[l] for r in ranks])}" for l in range(n_levels))
        lines += [
            f"  steps {phase.start}-{phase.end - 1} ({', '.join(labels[key])}): {roles}",
            f"      kept points {_range([r.kept_points for r in ranks])}; active pairs {active}; "
            f"halo points {_range([r.halo_points for r in ranks])}",
            f"      fixed pairs (evaluated once per phase) {fixed}",
        ]
    return lines


def _range(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _memory_report(exp, work, limit: int, device_kind: str) -> int:
    """Each rank's estimated memory (:mod:`ddpinn.parallel.memory`) against ``limit`` bytes: the
    largest, and whether it fits. Over the limit: an error naming the parts, levels and points
    that dominate, and :data:`DOES_NOT_FIT`. Nothing is allocated."""
    from ddpinn.parallel.memory import estimate_rank_memory

    estimates = [estimate_rank_memory(exp, r, device_kind) for r in work.ranks]
    worst = max(range(len(estimates)), key=lambda i: estimates[i].total_bytes)
    estimate, rank = estimates[worst], work.ranks[worst]
    fits = estimate.total_bytes <= limit
    totals = [e.total_bytes for e in estimates]
    print(f"memory        per rank {_size(min(totals))}-{_size(max(totals))} on {device_kind}, device "
          f"{_size(limit)}: {'fits' if fits else 'does NOT fit'}")
    print(f"              largest, rank {rank.rank}: {estimate.describe(4)}")
    if fits:
        return 0
    levels = sorted(rank.pairs_by_level.items(), key=lambda kv: -kv[1])[:3]
    print(
        f"ddpinn: error: --device-memory {_size(limit)}: rank {rank.rank} needs about {_size(estimate.total_bytes)} "
        f"({', '.join(f'{name} {_size(b)}' for name, b in estimate.dominant(3))}); it evaluates {rank.pairs} "
        f"(point, subdomain) pairs at {rank.n_own} own + {rank.halo_points} halo points, most on "
        f"{', '.join(f'level {l + 1} ({p} pairs)' for l, p in levels)}; use more ranks, fewer points (sampling.n) "
        f"or fewer levels",
        file=sys.stderr,
    )
    return DOES_NOT_FIT


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


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
    from ddpinn.io.export import ExportError
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
        if args.command == "export":
            from ddpinn.io.export import export_run

            out = Path(args.out) if args.out else None
            for path in export_run(Path(args.run_dir), args.fmt, out=out, n=args.n, device=args.device):
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
            ((ConfigError, CheckpointError, LayoutError, LaunchError, ExportError), 2, "error"),
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
