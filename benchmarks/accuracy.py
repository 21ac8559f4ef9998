"""Accuracy benchmark: FBPINN (and the PINN baseline) on the reference cases with targets, judged
by the median over several seeds.

Trains, through the public API, the published settings of

    P1    Cos1D (omega = 15)      configs/cos1d.yaml          PINN configs/cos1d_pinn.yaml
    P3    damped oscillator       configs/harmonic.yaml       (soft constraints, as published)
                                  configs/harmonic_hard.yaml  (hard ansatz, a variant)
                                                              PINN configs/harmonic_pinn.yaml
    P4L4  Poisson 2D, L = 4       configs/poisson2d_L4.yaml   PINN configs/poisson2d_pinn.yaml
    P4L5  Poisson 2D, L = 5       configs/poisson2d_L5.yaml at 8,000 steps

once per seed (``run.seed``), and judges every target by the **median** over the seeds, as
/work/shared/reference/problems.md asks (single seeds of the reference spread by up to 3x); the
minimum and maximum are reported beside it. Writes

    JSON           a list of rows, one per (case, method, judged step): seeds, per-seed errors,
                   median/min/max of each metric, targets and the verdict
    OUT/accuracy.md   the same as a table
    OUT/accuracy.png  test error vs step per case: median over seeds, min-max band, targets
    OUT/runs/<config>_seed<k>/   the run directories (removed and retrained on every invocation
                   unless --reuse finds a finished run of exactly the same config)

    python benchmarks/accuracy.py --targets-only         # published settings, 3 seeds, no PINN baselines
    python benchmarks/accuracy.py --quick                # shortened settings, 3 seeds (~6 min on 2 idle cores)
    python benchmarks/accuracy.py --only P3 P4L4 --targets-only
    python benchmarks/accuracy.py --only P3 --seeds 0 1 2 3 4 --reuse

--jobs (run, seed) pairs train at once in spawned processes (default: one per core, each with
--threads threads). --quick trains the *_quick configs (with the ``quick`` overrides of the
table below); a target is judged there only when the quick run reaches the target's step (same
number of Adam steps, as problems.md compares), and its verdict is marked [quick]. The only
numbers in this file are the targets and where they come from.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from ddpinn.config import Config, load_config, to_dict
from ddpinn.io.outputs import read_metrics
from ddpinn.session import run_training

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
METRICS = ("rel_l2", "l1", "normalised_l1")
LABELS = {"rel_l2": "rel L2", "l1": "L1", "normalised_l1": "normalised L1"}
MIN_SEEDS = 3


# ----------------------------------------------------------------------------- what to run
@dataclass(frozen=True)
class Target:
    """The median over seeds of ``metric`` at Adam step ``step`` must be ``<= bound``."""

    metric: str
    bound: float
    step: int
    source: str  # where the bound comes from (shown beside it)

    def describe(self) -> str:
        return f"{LABELS[self.metric]} <= {self.bound:.1e} @{self.step // 1000}k ({self.source})"


@dataclass(frozen=True)
class Run:
    """One method on one case. ``overrides`` apply to ``configs/<config>.yaml`` (full mode);
    ``quick`` to ``configs/<config>_quick.yaml`` (``--quick``), None: not run in quick mode."""

    method: str  # "FBPINN", "PINN", or a variant's label
    config: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None
    targets: tuple[Target, ...] = ()
    published: str = ""  # what the papers report, for runs without a target


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    runs: tuple[Run, ...]


P1_TARGETS = (
    Target("normalised_l1", 7e-4, 10_000, "problems.md"),
    Target("rel_l2", 1.0e-3, 50_000, "problems.md"),
    Target("normalised_l1", 7e-4, 50_000, "problems.md"),
)
P4L4_TARGETS = (
    Target("rel_l2", 8e-3, 30_000, "problems.md; reference 7.5e-3, 8.1e-3 on two seeds"),
    Target("normalised_l1", 6e-3, 30_000, "problems.md"),
)
P4L5_TARGETS = (Target("rel_l2", 1.7e-2, 8_000, "problems.md"),)
CASES = (
    Case("P1", "P1 Cos1D (omega=15)", (
        Run("FBPINN", "cos1d", quick=(), targets=P1_TARGETS),
        Run("PINN", "cos1d_pinn", published="paper: rel L2 ~3e-2"),
    )),
    Case("P3", "P3 damped oscillator (w0=80)", (
        # problems.md: judge against the reference's median for the same constraint type.
        Run("FBPINN", "harmonic", quick=(), targets=(
            Target("rel_l2", 3.4e-3, 20_000,
                   "reference soft median of 6 seeds 2.5e-3..7.3e-3; published seed 2.5e-3"),)),
        Run("FBPINN, hard ansatz", "harmonic_hard", quick=(), targets=(
            Target("rel_l2", 7.7e-3, 20_000, "reference hard median of 3.9e-3, 7.7e-3, 1.0e-2"),)),
        Run("PINN", "harmonic_pinn", published="paper: rel L2 ~0.6 (fails)"),
    )),
    Case("P4L4", "P4 Poisson 2D, L=4", (
        # Quick: the README's first command (1k Adam + 1k L-BFGS steps), not judged at 30k.
        Run("FBPINN", "poisson2d_L4", quick=(), targets=P4L4_TARGETS),
        # problems.md: "Beating these with a learning-rate schedule is expected."
        Run("FBPINN, lr 2e-3 decaying to 2e-5", "poisson2d_L4",
            overrides=("optimizer.lr=2e-3", "optimizer.schedule={kind: exponential, decay: 0.01}"),
            targets=P4L4_TARGETS),
        Run("PINN", "poisson2d_pinn"),
    )),
    Case("P4L5", "P4 Poisson 2D, L=5 (8k steps)", (
        Run("FBPINN", "poisson2d_L5", overrides=("train.steps=8000",), targets=P4L5_TARGETS),
        Run("FBPINN, lr 2e-3 decaying to 1e-4", "poisson2d_L5",
            overrides=("train.steps=8000", "optimizer.lr=2e-3", "optimizer.schedule={kind: exponential, decay: 0.05}"),
            targets=P4L5_TARGETS),
    )),
)


def selected_runs(cases: tuple[Case, ...], only: list[str] | None, quick: bool,
                  targets_only: bool) -> list[tuple[Case, Run]]:
    """The (case, run) pairs an invocation trains, in table order."""
    return [
        (case, run) for case in cases if not only or case.key in only for run in case.runs
        if (not quick or run.quick is not None) and (run.targets or not targets_only)
    ]


# ----------------------------------------------------------------------------- training
@dataclass
class SeedRun:
    """One trained seed of one run: its error curve from ``metrics.jsonl``."""

    seed: int
    run_dir: str
    steps: int
    train_seconds: float
    compile_seconds: float
    curve: list[dict[str, float]]  # evaluated steps: {"step", "rel_l2", "l1", "normalised_l1"}
    commit: str
    reused: bool

    def at(self, step: int) -> dict[str, float] | None:
        return next((p for p in self.curve if p["step"] == step), None)


def run_name(run: Run, quick: bool) -> str:
    """The config stem, plus the variant's label for a variant made by overrides of a config that
    another run of the case uses too (its runs need directories of their own)."""
    stem = f"{run.config}_quick" if quick else run.config
    if run.method in ("FBPINN", "PINN") or not run.overrides:
        return stem
    return f"{stem}_{re.sub(r'[^a-z0-9]+', '_', run.method.lower()).strip('_')}"


def make_config(run: Run, seed: int, *, quick: bool, out: Path, threads: int) -> tuple[Config, Path]:
    """The resolved config of one seed and the file it was loaded from."""
    path = CONFIGS / f"{run.config}_quick.yaml" if quick else CONFIGS / f"{run.config}.yaml"
    overrides = list(run.quick or ()) if quick else list(run.overrides)
    overrides += [f"run.seed={seed}", f"run.threads={threads}", f"run.output_dir={out / 'runs'}",
                  f"run.name={run_name(run, quick)}_seed{seed}"]
    return load_config(path, overrides), path


def check_target_steps(cfg: Config, run: Run, path: Path) -> None:
    """Full settings must evaluate the test error at every target's step (before training starts)."""
    every = cfg.train.eval_every
    for t in run.targets:
        if t.step > cfg.train.steps:
            raise SystemExit(f"{path}: target at step {t.step} but train.steps={cfg.train.steps}")
        if t.step != cfg.train.steps and (not every or t.step % every):
            raise SystemExit(f"{path}: train.eval_every={every} does not divide the target step {t.step}")


def _finished_run_of(cfg: Config) -> bool:
    """The run directory holds a finished run of exactly ``cfg``."""
    run_dir = cfg.run_dir
    if not (run_dir / "summary.json").exists() or not (run_dir / "config.yaml").exists():
        return False
    same = yaml.safe_load((run_dir / "config.yaml").read_text()) == yaml.safe_load(
        yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return same and json.loads((run_dir / "summary.json").read_text()).get("step") == cfg.train.steps + cfg.lbfgs.steps


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier benchmark run so that every seed trains into a fresh directory; refuse
    to remove anything that does not look like a ddpinn run directory."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir() or (any(run_dir.iterdir()) and not (run_dir / "config.yaml").exists()):
        raise SystemExit(f"{run_dir} exists and is not a ddpinn run directory; remove it or choose another --out")
    shutil.rmtree(run_dir)


def _curve(run_dir: Path) -> list[dict[str, float]]:
    return [{"step": r["step"], **{m: r[m] for m in METRICS}}
            for r in read_metrics(run_dir / "metrics.jsonl") if "rel_l2" in r]


def train_seed(label: str, cfg: Config, path: Path, seed: int, *, reuse: bool, commit: str) -> SeedRun:
    run_dir = cfg.run_dir
    meta = run_dir / "benchmark_meta.json"
    if reuse and _finished_run_of(cfg):
        summary = json.loads((run_dir / "summary.json").read_text())
        steps, seconds, compile_s = summary["step"], summary["train_seconds"], summary["compile_seconds"]
        commit = json.loads(meta.read_text())["ddpinn_commit"] if meta.exists() else "unknown"
        reused = True
    else:
        clear_run_dir(run_dir)
        print(f"[{label} seed {seed}] training {path.parent.name}/{path.name} ({cfg.train.steps} steps) -> {run_dir}",
              flush=True)
        result = run_training(cfg, base_dir=path.parent, quiet=True)
        steps, seconds, compile_s = result.step, result.train_seconds, result.compile_seconds
        meta.write_text(json.dumps({"ddpinn_commit": commit}) + "\n")
        reused = False
    curve = _curve(run_dir)
    if not curve or curve[-1]["step"] != steps:
        raise SystemExit(f"{run_dir}/metrics.jsonl has no evaluation at the final step {steps}")
    print(f"[{label} seed {seed}] {'reused, ' if reused else ''}{steps} steps in {seconds:.1f} s: "
          + ", ".join(f"{LABELS[m]} {curve[-1][m]:.3e}" for m in METRICS), flush=True)
    return SeedRun(seed, str(run_dir), steps, seconds, compile_s, curve, commit, reused)


# ----------------------------------------------------------------------------- judging
@dataclass
class Spread:
    """Median, minimum and maximum of one figure over seeds."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class Row:
    """One (case, method, step) over all seeds: what accuracy.json lists."""

    case: str
    title: str
    method: str
    config: str  # path relative to the repository
    overrides: list[str]
    mode: str  # "full" (published settings) or "quick"
    step: int
    seeds: list[int]
    per_seed: list[dict]  # {"seed", "rel_l2", "l1", "normalised_l1", "run_dir"}
    errors: dict[str, Spread]  # metric -> median/min/max over seeds
    train_seconds: Spread | None  # final-step rows only
    targets: list[dict]  # {"metric", "bound", "step", "source", "median", "pass"}
    result: str  # "pass", "miss", "not judged: ...", or "" (no target)
    published: str
    ddpinn_commit: str


def verdict(checks: list[dict], quick: bool) -> str:
    """``pass`` when every target's median is within its bound, else ``miss``; quick runs are marked."""
    if not checks:
        return ""
    result = "pass" if all(c["pass"] for c in checks) else "miss"
    return f"{result} [quick]" if quick else result


def make_rows(case: Case, run: Run, seeds: list[SeedRun], *, quick: bool, config: str,
              overrides: list[str]) -> list[Row]:
    """One row per step that carries a target (judged if every seed evaluated it) and the final step."""
    final = min(s.steps for s in seeds)
    by_step: dict[int, list[Target]] = {final: []}
    unreached = [t for t in run.targets if any(s.at(t.step) is None for s in seeds)]
    for t in run.targets:
        if t not in unreached:
            by_step.setdefault(t.step, []).append(t)
    if unreached and not quick:
        missing = sorted({t.step for t in unreached})
        raise SystemExit(f"{case.key} {run.method}: no evaluation at target step(s) {missing}")
    rows = []
    for step in sorted(by_step):
        points = [s.at(step) for s in seeds]
        errors = {m: Spread.of([p[m] for p in points]) for m in METRICS}
        checks = [{"metric": t.metric, "bound": t.bound, "step": t.step, "source": t.source,
                   "median": errors[t.metric].median, "pass": bool(errors[t.metric].median <= t.bound)}
                  for t in by_step[step]]
        result = verdict(checks, quick)
        if step == final and unreached:  # quick mode only: its runs stop before these targets
            note = f"not judged: quick run stops at step {final}, before targets at " + ", ".join(
                f"{s // 1000}k" for s in sorted({t.step for t in unreached}))
            result = f"{result}; {note}" if result else note
        rows.append(Row(
            case.key, case.title, run.method, config, overrides, "quick" if quick else "full", step,
            [s.seed for s in seeds],
            [{"seed": s.seed, **{m: p[m] for m in METRICS}, "run_dir": s.run_dir} for s, p in zip(seeds, points)],
            errors, Spread.of([s.train_seconds for s in seeds]) if step == final else None,
            checks, result, run.published, ",".join(sorted({s.commit for s in seeds})),
        ))
    return rows


# ----------------------------------------------------------------------------- reports
def _spread(s: Spread) -> str:
    return f"{s.median:.2e} ({s.min:.2e}–{s.max:.2e})"


def _target_text(row: Row) -> str:
    if row.targets:
        return "; ".join(f"{LABELS[c['metric']]} <= {c['bound']:.1e} ({c['source']})" for c in row.targets)
    return row.published or "-"


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "",
             ("| case | method | step | seeds | rel L2 median (min–max) | normalised L1 median (min–max) | "
              "train s (median) | target (median must meet it) | result |"),
             "|---|---|---:|---|---|---|---:|---|---|"]
    for r in rows:
        seconds = f"{r.train_seconds.median:.0f}" if r.train_seconds else "-"
        lines.append(f"| {r.title} | {r.method} | {r.step} | {','.join(map(str, r.seeds))} | "
                     f"{_spread(r.errors['rel_l2'])} | {_spread(r.errors['normalised_l1'])} | {seconds} | "
                     f"{_target_text(r)} | {r.result} |")
    return "\n".join(lines) + "\n"


def plot(groups: list[tuple[Case, Run, list[SeedRun]]], path: Path) -> Path | None:
    """rel L2 vs step per case: median over seeds (line) and min-max band; targets dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot written")
        return None
    cases = list(dict.fromkeys(case.key for case, _, _ in groups))
    fig, axes = plt.subplots(1, len(cases), figsize=(4.4 * len(cases), 3.8), squeeze=False)
    for ax, key in zip(axes[0], cases):
        mine = [(case, run, seeds) for case, run, seeds in groups if case.key == key]
        for colour, (_, run, seeds) in enumerate(mine):
            steps = sorted(set.intersection(*({p["step"] for p in s.curve} for s in seeds)))
            spreads = [Spread.of([s.at(step)["rel_l2"] for s in seeds]) for step in steps]
            ax.semilogy(steps, [sp.median for sp in spreads], color=f"C{colour}",
                        label=f"{run.method} (median of {len(seeds)})")
            ax.fill_between(steps, [sp.min for sp in spreads], [sp.max for sp in spreads], color=f"C{colour}",
                            alpha=0.2)
            for t in run.targets:
                if t.metric == "rel_l2":
                    ax.axhline(t.bound, color=f"C{colour}", lw=0.8, ls="--")
                    ax.plot([t.step], [t.bound], "v", color=f"C{colour}")
        ax.set_title(mine[0][0].title, fontsize=10)
        ax.set_xlabel("Adam step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test rel L2 (band: min-max over seeds;\ndashed: targets for the median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def code_version() -> str:
    """The ddpinn commit the runs used (``+dirty`` when ddpinn/ has uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "ddpinn"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shortened settings (the *_quick configs), <= 10 min")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="run.seed values (at least 3; default 0 1 2)")
    p.add_argument("--only", nargs="+", metavar="CASE", choices=[c.key for c in CASES],
                   help=f"run only these cases ({', '.join(c.key for c in CASES)})")
    p.add_argument("--targets-only", action="store_true", help="skip runs without a target (the PINN baselines)")
    p.add_argument("--jobs", type=int,
                   help="(run, seed) pairs trained at once, in separate processes (default: cores / --threads)")
    p.add_argument("--threads", type=int, default=1,
                   help="run.threads of every run (default 1: steady when other processes share the cores)")
    p.add_argument("--out", type=Path,
                   help="runs, table and plot (default results/accuracy, or results/accuracy_quick)")
    p.add_argument("--json", type=Path, help="the rows (default results/accuracy.json, or results/accuracy_quick.json)")
    p.add_argument("--reuse", action="store_true",
                   help="keep a seed's run directory that holds a finished run of the same config")
    args = p.parse_args(argv)
    args.jobs = args.jobs or max(1, (os.cpu_count() or 1) // max(args.threads, 1))
    if args.jobs < 1 or args.threads < 1:
        p.error(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    if len(set(args.seeds)) < MIN_SEEDS:
        p.error(f"--seeds: targets are judged by the median over at least {MIN_SEEDS} distinct seeds, got {args.seeds}")
    suffix = "_quick" if args.quick else ""
    args.out = args.out or Path(f"results/accuracy{suffix}")
    args.json = args.json or Path(f"results/accuracy{suffix}.json")
    return args


def write_reports(args: argparse.Namespace, rows: list[Row], groups: list, seeds: list[int], wall: float,
                  done: bool) -> None:
    """accuracy.json, accuracy.md and (at the end) accuracy.png; rewritten after every run, so
    that an interrupted full run keeps the cases it finished."""
    mode = ("quick settings (*_quick configs, shortened); targets judged only at steps the quick runs reach"
            if args.quick else "published settings")
    reused = " (some runs reused)" if any(s.reused for _, _, ss in groups for s in ss) else ""
    header = (f"# ddpinn accuracy benchmark ({mode}{'' if done else ', in progress'})\n\n"
              f"Median over seeds {', '.join(map(str, seeds))} (min–max in brackets); ddpinn "
              f"{', '.join(sorted({r.ddpinn_commit for r in rows}))}, torch {torch.__version__}, "
              f"{platform.machine()} {os.cpu_count()} CPU(s), run.threads={args.threads}, float32, "
              f"one process per run, {args.jobs} at a time; "
              f"wall time {wall / 60:.1f} min{reused}. Targets from /work/shared/reference/problems.md; "
              f"a target is met when the median meets it.")
    table = markdown(rows, header)
    (args.out / "accuracy.md").write_text(table)
    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if done:
        print("\n" + table)
        png = plot(groups, args.out / "accuracy.png")
        print(f"wrote {args.json}, {args.out / 'accuracy.md'}" + (f", {png}" if png else ""))


def train_all(plan: list[tuple[Case, Run]], configs: dict, seeds: list[int], *, jobs: int, reuse: bool,
              commit: str) -> Iterator[tuple[Case, Run, list[SeedRun]]]:
    """Train every (run, seed) of ``plan`` and yield each run with its seeds, in plan order.

    ``jobs`` > 1 trains that many (run, seed) pairs at once in spawned processes: with one thread
    each, two jobs use both cores of a 2-core machine. One job trains in this process (and reuses
    its torch.compile caches from seed to seed)."""

    def arguments(case: Case, run: Run, seed: int) -> tuple:
        return (f"{case.key} {run.method}", *configs[case.key, run.method, seed], seed)

    if jobs == 1:
        for case, run in plan:
            yield case, run, [train_seed(*arguments(case, run, seed), reuse=reuse, commit=commit) for seed in seeds]
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {(case.key, run.method, seed): pool.submit(train_seed, *arguments(case, run, seed), reuse=reuse,
                                                             commit=commit)
                   for case, run in plan for seed in seeds}
        for case, run in plan:
            yield case, run, [futures[case.key, run.method, seed].result() for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    plan = selected_runs(CASES, args.only, args.quick, args.targets_only)
    seeds = list(dict.fromkeys(args.seeds))
    commit = code_version()
    configs = {}
    for case, run in plan:  # every config loads and (full mode) evaluates its target steps before anything trains
        for seed in seeds:
            cfg, path = make_config(run, seed, quick=args.quick, out=args.out, threads=args.threads)
            if not args.quick:
                check_target_steps(cfg, run, path)
            configs[case.key, run.method, seed] = cfg, path

    t0 = time.perf_counter()
    rows, groups = [], []
    for case, run, trained in train_all(plan, configs, seeds, jobs=args.jobs, reuse=args.reuse, commit=commit):
        path = configs[case.key, run.method, seeds[0]][1]
        overrides = list(run.quick or ()) if args.quick else list(run.overrides)
        rows += make_rows(case, run, trained, quick=args.quick, config=str(path.relative_to(REPO)), overrides=overrides)
        groups.append((case, run, trained))
        write_reports(args, rows, groups, seeds, time.perf_counter() - t0, done=len(groups) == len(plan))
    return 1 if not args.quick and any(r.result == "miss" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
