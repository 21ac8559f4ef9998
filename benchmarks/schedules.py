"""Subdomain-schedule benchmark (issue 8): time-marching sweeps, coarse-to-fine levels, richer
subdomain networks, and a sweep on two ranks with and without the schedule-aware partition.

    case      base config (quick: the same, shortened by --set)  runs compared
    burgers   P6 Burgers, configs/burgers_quick.yaml               all_active, sweep along t (band 0.5)
    wave      P7 wave, configs/wave1d_quick.yaml                   all_active, sweep along t (band 0.5)
    p4l5      P4 L=5, configs/poisson2d_L5_quick.yaml              all_active, coarse_to_fine (level l from l/10 of the steps)
    p1w80     P1 omega = 80, configs/cos1d_w80*.yaml (30 subd.)   plain, fourier (16 features), adaptive (sin, neuron-wise)
    ranks     P6 Burgers sweep under mpiexec -n 2                  schedule-aware grid (x cut), time cut (partition_axes [t])

Every run is one ``ddpinn train CONFIG --set ...`` process (under ``mpiexec -n 2`` for ``ranks``)
with a fresh empty ``TORCHINDUCTOR_CACHE_DIR``, ``run.threads=1``, eager (``train.compile=off``:
a sweep changes the batch shapes at every transition) and float32; ``wall_s`` is that command's
wall time, from its start to its last line. One-rank runs go ``--jobs`` at a time (the runs of one
case and seed side by side, so that they see the same load); two-rank runs alone. Writes

    JSON                a list of rows {case, schedule, seed, steps, rel_l2, wall_s, train_s, ranks,
                        phase_ms (ms per step per schedule phase, from metrics.jsonl), curve, command, ...}
    OUT/schedules.md    medians over seeds (min-max) per (case, schedule), wall-time ratios
    OUT/schedules.png   one panel per case: error vs wall time (sweeps), error curves (p4l5, p1w80),
                        ms per step per phase (ranks)

    python benchmarks/schedules.py --quick              # <= 10 min on 2 cores: 1 seed, shortened
    python benchmarks/schedules.py --only burgers p1w80 # the base configs, 3 seeds

Defaults: ``--quick`` writes ``results/schedules.json`` and ``results/schedules_quick/``; full
mode ``results/schedules_full.json`` and ``results/schedules/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accuracy import Spread, code_version

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.io.outputs import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FULL_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)


@dataclass(frozen=True)
class StepFractions:
    """An override value of per-level steps given as fractions of the run's Adam steps
    (``train.steps`` after every override): quick and full runs switch levels on at the same
    point of their run."""

    fractions: tuple[float, ...]

    def resolve(self, steps: int) -> str:
        return "[" + ", ".join(str(int(f * steps)) for f in self.fractions) + "]"


@dataclass(frozen=True)
class Method:
    """One run of a case: ``overrides`` (``--set`` key -> YAML value) on the case's base config, or
    on ``config`` (a config name) when given; ``ranks`` > 1 runs under mpiexec."""

    name: str
    overrides: dict[str, str | StepFractions] = field(default_factory=dict)
    config: str | None = None
    ranks: int = 1


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    config: str
    methods: tuple[Method, ...]
    quick: dict[str, str]
    """Overrides that shorten the case for ``--quick`` (fewer points and steps)."""
    full: dict[str, str] = field(default_factory=dict)
    seeds_full: bool = True
    """False: one seed in full mode too (a timing case)."""


def sweep(band: str = "0.5") -> dict[str, str]:
    return {"schedule.kind": "sweep", "schedule.axis": "t", "schedule.width": band}


ALL_ACTIVE = Method("all_active")
COARSE_TO_FINE = Method("coarse_to_fine", {
    "schedule.kind": "coarse_to_fine",
    # Level l (0-based) switches on after l/10 of the steps: the finest at 40 %.
    "schedule.starts": StepFractions((0.0, 0.1, 0.2, 0.3, 0.4)),
})
CASES = (
    Case("burgers", "P6 Burgers (3x2 subdomains)", "burgers_quick", (ALL_ACTIVE, Method("sweep", sweep())),
         quick={"sampling.n": "[50, 50]", "train.steps": "800", "train.eval_every": "200", "train.log_every": "50"},
         full={"train.eval_every": "500", "train.log_every": "100"}),
    Case("wave", "P7 wave (L=3)", "wave1d_quick", (ALL_ACTIVE, Method("sweep", sweep())),
         quick={"sampling.n": "[40, 40]", "train.steps": "800", "train.eval_every": "200", "train.log_every": "50"},
         full={"train.steps": "6000", "train.eval_every": "500", "train.log_every": "100"}),
    Case("p4l5", "P4 L=5 (341 subdomains)", "poisson2d_L5_quick", (ALL_ACTIVE, COARSE_TO_FINE),
         quick={"sampling.n": "[40, 40]", "train.steps": "500", "train.eval_every": "50", "train.log_every": "50"},
         full={"train.eval_every": "250", "train.log_every": "250"}),
    # The shipped settings (their headers list what else was tried): 16 fixed Fourier features
    # with sigma 8, and sin units with neuron-wise slopes n = 20 (tanh with layer-wise slopes fails).
    Case("p1w80", "P1 ω=80 (30 subdomains)", "cos1d_w80", (
        Method("plain"),
        Method("fourier", config="cos1d_w80_fourier"),
        Method("adaptive", config="cos1d_w80_adaptive"),
    ), quick={"train.steps": "1000", "train.eval_every": "250", "train.log_every": "250"}),
    Case("ranks", "P6 Burgers sweep on 2 ranks", "burgers_quick", (
        Method("sweep, schedule-aware grid", sweep(), ranks=2),
        Method("sweep, time cut", {**sweep(), "parallel.partition_axes": "[t]"}, ranks=2),
    ), quick={"sampling.n": "[50, 50]", "train.steps": "400", "train.eval_every": "400", "train.log_every": "25"},
         full={"train.steps": "2000", "train.eval_every": "2000", "train.log_every": "50"}, seeds_full=False),
)


# ----------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    case: str
    method: str
    seed: int
    ranks: int
    config: str  # relative to the repository
    overrides: tuple[str, ...]  # the case's and the method's, resolved
    run_dir: Path
    phases: tuple[tuple[int, int], ...]  # the schedule's Adam phases [start, end)

    @property
    def command(self) -> str:
        sets = [f"--set {shlex.quote(o)}" for o in self.overrides]
        launch = f"mpiexec -n {self.ranks} " if self.ranks > 1 else ""
        return " ".join([f"{launch}ddpinn train {self.config}", *sets, "--overwrite"])


def make_job(case: Case, method: Method, seed: int, *, quick: bool, out: Path) -> Job:
    path = CONFIGS / f"{method.config or case.config}.yaml"
    shape = {**(case.quick if quick else case.full), "train.compile": "off"}
    steps = load_config(path, [f"{k}={v}" for k, v in shape.items()]).train.steps
    name = f"{case.key}_{method.name.split(',')[-1].strip().replace(' ', '_').replace('-', '_')}_seed{seed}"
    overrides = [f"{k}={v.resolve(steps) if isinstance(v, StepFractions) else v}"
                 for k, v in {**shape, **method.overrides}.items()]
    overrides += [f"run.seed={seed}", f"run.name={name}", "run.threads=1", f"run.output_dir={out / 'runs'}"]
    cfg = load_config(path, overrides)  # every config loads and builds before anything trains
    exp = build_experiment(cfg, path.parent)
    return Job(case.key, method.name, seed, method.ranks, str(path.relative_to(REPO)), tuple(overrides),
               cfg.run_dir, tuple(exp.schedule.phases()))


def _ddpinn() -> str:
    found = Path(sys.executable).with_name("ddpinn")
    return str(found) if found.exists() else "ddpinn"


def _mpiexec() -> str:
    found = Path(sys.executable).with_name("mpiexec")
    return str(found) if found.exists() else "mpiexec"


@dataclass
class Row:
    """One finished run: what the JSON lists."""

    case: str
    schedule: str
    seed: int
    steps: int | None
    rel_l2: float | None  # None: the run failed (``error``)
    wall_s: float  # the command, start to its last line
    train_s: float | None  # the training loop (summary.json)
    ranks: int
    phase_ms: list[dict]  # per schedule phase: {start, end, ms_per_step}
    curve: list[dict]  # {step, rel_l2} at each evaluation
    mode: str
    config: str
    overrides: list[str]
    command: str
    run_dir: str
    ddpinn_commit: str
    error: str | None = None  # the failed command's last stderr lines


def phase_times(records: list[dict], phases: tuple[tuple[int, int], ...]) -> list[dict]:
    """Median ms per step over the log records of each phase (a record at step s times the steps
    since the previous record, all inside the phase holding s - 1; the first record, which holds
    the start-up, and records that straddle a transition are left out)."""
    out = []
    previous = {r["step"]: p["step"] for p, r in zip(records, records[1:])}
    for start, end in phases:
        ms = sorted(1000.0 / r["steps_per_s"] for r in records
                    if r["step"] in previous and start <= previous[r["step"]] and r["step"] <= end
                    and r.get("steps_per_s") and r["steps_per_s"] > 0)
        out.append({"start": start, "end": end, "ms_per_step": ms[len(ms) // 2] if ms else None})
    return out


def run(job: Job, *, quick: bool, commit: str) -> Row:
    """Train ``job`` in its own process(es) with a cold compile cache; its row."""
    if job.run_dir.exists():
        shutil.rmtree(job.run_dir)
    cmd = [_ddpinn(), "train", str(REPO / job.config), *[a for o in job.overrides for a in ("--set", o)], "--quiet"]
    if job.ranks > 1:
        cmd = [_mpiexec(), "-n", str(job.ranks), *cmd]
    label = f"[{job.case} {job.method} seed {job.seed}]"
    print(f"{label} {job.command}", flush=True)
    with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    mode = "quick" if quick else "full"
    if done.returncode != 0:  # recorded and skipped past: the other runs still report
        error = "\n".join(done.stderr.strip().splitlines()[-3:])
        print(f"{label} FAILED ({done.returncode}) after {wall:.0f} s: {error}", flush=True)
        return Row(job.case, job.method, job.seed, None, None, wall, None, job.ranks, [], [], mode, job.config,
                   list(job.overrides), job.command, str(job.run_dir), commit, error)
    summary = json.loads((job.run_dir / "summary.json").read_text())
    records = read_metrics(job.run_dir / "metrics.jsonl")
    curve = [{"step": r["step"], "rel_l2": r["rel_l2"]} for r in records if "rel_l2" in r]
    print(f"{label} {summary['step']} steps in {wall:.0f} s: rel L2 {curve[-1]['rel_l2']:.3e}", flush=True)
    return Row(job.case, job.method, job.seed, summary["step"], curve[-1]["rel_l2"], wall, summary["train_seconds"],
               job.ranks, phase_times(records, job.phases), curve, mode, job.config,
               list(job.overrides), job.command, str(job.run_dir), commit)


# ----------------------------------------------------------------------------- reports
def _spread(values: list[float | None], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "failed"
    s = Spread.of(values)
    return format(s.median, fmt) if s.min == s.max else f"{format(s.median, fmt)} ({format(s.min, fmt)}–{format(s.max, fmt)})"


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| case | schedule | ranks | seeds | steps | rel L2 median (min–max) | wall s | train s | "
             "wall / first row's | ms/step per phase (first seed) |", "|---|---|---:|---|---:|---|---:|---:|---:|---|"]
    titles = {c.key: c.title for c in CASES}
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.case, r.schedule), []).append(r)
    first_wall: dict[str, float] = {}
    for (case, schedule), mine in groups.items():
        wall = Spread.of([r.wall_s for r in mine]).median
        base = first_wall.setdefault(case, wall)
        phases = ", ".join(f"{p['start']}-{p['end']}: {p['ms_per_step']:.1f}" if p["ms_per_step"] else "-"
                           for p in mine[0].phase_ms)
        lines.append(f"| {titles.get(case, case)} | {schedule} | {mine[0].ranks} | {','.join(str(r.seed) for r in mine)} "
                     f"| {mine[0].steps} | {_spread([r.rel_l2 for r in mine], '.2e')} | "
                     f"{_spread([r.wall_s for r in mine], '.0f')} | {_spread([r.train_s for r in mine], '.0f')} | "
                     f"{wall / base:.2f} | {phases} |")
    lines += [f"- FAILED: {titles.get(r.case, r.case)}, {r.schedule}, seed {r.seed}: {r.error}" for r in rows if r.error]
    lines += ["", "Rerun a row (seed 0):", ""]
    lines += [f"- {titles.get(c, c)}, {s}: `{mine[0].command}`" for (c, s), mine in groups.items()]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot written")
        return None
    cases = [c for c in CASES if any(r.case == c.key for r in rows)]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.3 * len(cases), 3.8), squeeze=False)
    for ax, case in zip(axes[0], cases):
        mine = [r for r in rows if r.case == case.key and r.error is None]
        methods = list(dict.fromkeys(r.schedule for r in mine))
        for colour, method in enumerate(methods):
            runs = [r for r in mine if r.schedule == method]
            if case.key == "ranks":  # ms per step in each phase, one bar group per phase
                phases = runs[0].phase_ms
                xs = [i + 0.4 * colour for i in range(len(phases))]
                ax.bar(xs, [p["ms_per_step"] or 0 for p in phases], width=0.4, color=f"C{colour}",
                       label=f"{method}: wall {runs[0].wall_s:.0f} s")
                ax.set_xticks([i + 0.2 for i in range(len(phases))], [f"{p['start']}-{p['end']}" for p in phases])
                ax.set_xlabel("schedule phase (Adam steps)")
                ax.set_ylabel("ms per step (median)")
            elif case.key in ("burgers", "wave"):  # final error against wall time, every seed
                ax.loglog([r.wall_s for r in runs], [r.rel_l2 for r in runs], "o", color=f"C{colour}", label=method)
                ax.set_xlabel("wall s (whole command)")
                ax.set_ylabel("test rel L2 at the end")
            else:  # error curves, median over seeds
                steps = [p["step"] for p in runs[0].curve]
                median = [Spread.of([r.curve[i]["rel_l2"] for r in runs]).median for i in range(len(steps))]
                ax.semilogy(steps, median, color=f"C{colour}", label=f"{method} ({len(runs)} seed(s))")
                ax.set_xlabel("Adam step")
                ax.set_ylabel("test rel L2 (median over seeds)")
        if case.key == "p1w80":
            ax.axhline(1e-2, color="k", lw=0.8, ls="--")
        ax.set_title(case.title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shortened settings, 1 seed: <= 10 min on 2 cores")
    p.add_argument("--seeds", nargs="+", type=int, help="run.seed values (default 0 1 2; --quick: 0)")
    p.add_argument("--only", nargs="+", metavar="CASE", choices=[c.key for c in CASES], help="run only these cases")
    p.add_argument("--jobs", type=int, default=2, help="one-rank runs at once (default 2)")
    p.add_argument("--out", type=Path, help="runs, table and plot (default results/schedules[_quick])")
    p.add_argument("--json", type=Path, help="the rows (default results/schedules.json with --quick, else "
                                             "results/schedules_full.json)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    args.seeds = list(dict.fromkeys(args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)))
    args.out = args.out or Path("results/schedules_quick" if args.quick else "results/schedules")
    args.json = args.json or Path("results/schedules.json" if args.quick else "results/schedules_full.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if not args.only or c.key in args.only]
    jobs = [make_job(c, m, seed, quick=args.quick, out=args.out)
            for c in cases for seed in (args.seeds if c.seeds_full else args.seeds[:1]) for m in c.methods]
    commit, t0 = code_version(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each job is its own process
        alone = [j for j in jobs if j.ranks == 1]
        rows = list(pool.map(lambda j: run(j, quick=args.quick, commit=commit), alone))
    rows += [run(j, quick=args.quick, commit=commit) for j in jobs if j.ranks > 1]
    order = {(j.case, j.method, j.seed): i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r.case, r.schedule, r.seed)])
    wall = time.perf_counter() - t0
    header = (f"# ddpinn subdomain-schedule benchmark ({'quick settings' if args.quick else 'full settings'})\n\n"
              f"Seeds {', '.join(map(str, args.seeds))}; ddpinn {commit}, {platform.machine()} {os.cpu_count()} CPU(s), "
              f"run.threads=1, {args.jobs} one-rank run(s) at a time, eager float32; wall time {wall / 60:.1f} min. "
              "`wall s`: the `ddpinn train` command from start to its last line (cold compile cache).")
    table = markdown(rows, header)
    (args.out / "schedules.md").write_text(table)
    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print("\n" + table)
    figure = plot(rows, args.out / "schedules.png")
    print(f"wrote {args.json}, {args.out / 'schedules.md'}" + (f", {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
