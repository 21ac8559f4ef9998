"""Adaptive-training benchmark (issue 7, Part C): where the collocation points sit and how the
loss terms are weighted, compared at the same point budget, steps and network.

    case        base config (full; --quick)                                methods
    burgers     P6 Burgers, configs/burgers_adaptive.yaml; _quick          grid, random_r, rad, rar_d, self_adaptive
    allen_cahn  P9 Allen-Cahn, configs/allen_cahn_adaptive.yaml; _quick    fixed, rad, causal, rad+causal
    p4l4        P4 Poisson L=4, configs/poisson2d_L4_adaptive.yaml         grid, random_r, rad (errors at 15k and 30k)
                (full mode only)
    p3          P3 soft, configs/harmonic.yaml; harmonic_adaptive_quick    hand-set, self_adaptive, balanced

Every method of a case trains the case's base config with a few ``--set`` overrides (the
``Method`` entries below), so one row is rerun with ``ddpinn train CONFIG --set ...`` (printed
per row). Each (case, method, seed) trains through the public API (``load_config``,
``run_training``) into ``OUT/runs/<case>_<method>_seed<k>``, in ``--jobs`` spawned processes at
once (default one per core, ``run.threads=1`` each). Writes

    JSON              a list of rows, one per (case, method, seed, reported step): rel_l2,
                      normalised_l1, l1, wall_s (the whole run_training call), train_s, points at
                      the end, resampling seconds, the config, overrides and rerun command
    OUT/adaptive.md   medians over seeds (min-max), the issue's targets with their verdicts
    OUT/adaptive_curves.png   test rel L2 vs Adam step per case: median over seeds, min-max band
    OUT/adaptive_points.png   RAD / RAR-D collocation points over the exact solution at sampling events
    OUT/adaptive_weights.png  self-adaptive weights over the domain at the end; balanced term weights vs step

    python benchmarks/adaptive.py --quick                      # <= 10 min on 2 cores, 1 seed
    python benchmarks/adaptive.py --only burgers               # full settings, 3 seeds
    python benchmarks/adaptive.py --only burgers --methods grid rad --seeds 0 1 2 3 4

Defaults: ``--quick`` writes ``results/adaptive.json`` and ``results/adaptive_quick/``; full mode
``results/adaptive_full.json`` and ``results/adaptive/``. Targets (from the issue) are judged on
the median over seeds in full mode only; a quick run shows the figure beside the target, marked
not judged.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accuracy import Spread, _finished_run_of, clear_run_dir, code_version

from ddpinn.config import Config, load_config
from ddpinn.io.outputs import read_metrics
from ddpinn.session import run_training

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FULL_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)


# ----------------------------------------------------------------------------- what to run
SAME_INTERVAL = "<sampling.adaptive.every>"
"""An override value replaced by the base config's ``sampling.adaptive.every``, so that Random-R
draws new points as often as RAD does."""


@dataclass(frozen=True)
class Method:
    """One method of a case: ``overrides`` (``--set`` key -> YAML value) on the case's base config."""

    name: str
    overrides: dict[str, str] = field(default_factory=dict)


GRID = Method("grid")
RANDOM_R = Method("random_r", {"sampling.method": "uniform", "sampling.resample_every": SAME_INTERVAL})
RAD = Method("rad", {"sampling.method": "uniform", "sampling.adaptive.method": "rad"})


@dataclass(frozen=True)
class Judgement:
    target: str
    measured: str
    passed: bool | None  # None: not judged (quick mode, or a method that did not run)
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return f"not judged ({self.note})"
        return "pass" if self.passed else "miss"


MedianLookup = Callable[[str, int | None], float | None]
"""(method, step or None for the final step) -> median rel L2 over seeds, None if not run."""


@dataclass(frozen=True)
class AtMost:
    """The best median rel L2 among ``methods`` at ``step`` (None: the final step) is <= ``bound``."""

    methods: tuple[str, ...]
    bound: float
    step: int | None = None

    def describe(self) -> str:
        who = self.methods[0] if len(self.methods) == 1 else f"best of {', '.join(self.methods)}"
        at = f" @{self.step // 1000}k" if self.step else ""
        return f"{who}: rel L2{at} <= {self.bound:.0e}"

    def judge(self, median: MedianLookup) -> tuple[str, bool | None]:
        found = {m: median(m, self.step) for m in self.methods}
        ran = {m: v for m, v in found.items() if v is not None}
        if not ran:
            return "-", None
        best = min(ran, key=ran.get)
        return f"{best} {ran[best]:.2e}", ran[best] <= self.bound


@dataclass(frozen=True)
class TimesLower:
    """The median rel L2 of ``method`` is at least ``factor`` times lower than ``baseline``'s."""

    method: str
    baseline: str
    factor: float

    def describe(self) -> str:
        return f"{self.method}: rel L2 >= {self.factor:g}x lower than {self.baseline}"

    def judge(self, median: MedianLookup) -> tuple[str, bool | None]:
        mine, base = median(self.method, None), median(self.baseline, None)
        if mine is None or base is None:
            return "-", None
        return f"{base / mine:.1f}x ({mine:.2e} vs {base:.2e})", base >= self.factor * mine


@dataclass(frozen=True)
class NoRise:
    """The median rel L2 of ``method`` at step ``late`` is no higher than at step ``early``."""

    method: str
    early: int
    late: int

    def describe(self) -> str:
        return f"{self.method}: rel L2 @{self.late // 1000}k <= @{self.early // 1000}k (no overfitting)"

    def judge(self, median: MedianLookup) -> tuple[str, bool | None]:
        early, late = median(self.method, self.early), median(self.method, self.late)
        if early is None or late is None:
            return "-", None
        return f"{early:.2e} -> {late:.2e}", late <= early


Target = AtMost | TimesLower | NoRise


@dataclass(frozen=True)
class Case:
    """A problem with its base configs (``configs/<name>.yaml``; ``quick_config`` None: full mode
    only), the methods compared on it, steps reported besides the final one, and the targets."""

    key: str
    title: str
    config: str
    quick_config: str | None
    methods: tuple[Method, ...]
    report_steps: tuple[int, ...] = ()
    targets: tuple[Target, ...] = ()


CASES = (
    Case("burgers", "P6 Burgers", "burgers_adaptive", "burgers_adaptive_quick", (
        GRID, RANDOM_R, RAD,
        # Half the budget to start with; the base config's add/max_points grow it to the budget.
        Method("rar_d", {"sampling.method": "uniform", "sampling.n": "[25, 40]", "sampling.adaptive.method": "rar_d"}),
        Method("self_adaptive", {"loss.weighting": "self_adaptive"}),
    ), targets=(TimesLower("rad", "grid", 10.0), AtMost(("rad",), 1e-3))),
    Case("allen_cahn", "P9 Allen-Cahn", "allen_cahn_adaptive", "allen_cahn_adaptive_quick", (
        Method("fixed"),
        RAD,
        Method("causal", {"loss.causal.enabled": "true"}),
        Method("rad+causal", {**RAD.overrides, "loss.causal.enabled": "true"}),
    ), targets=(AtMost(("fixed", "rad", "causal", "rad+causal"), 1e-2),)),
    Case("p4l4", "P4 Poisson L=4, 40x40 points", "poisson2d_L4_adaptive", None, (GRID, RANDOM_R, RAD),
         report_steps=(15_000,),
         targets=(NoRise("random_r", 15_000, 30_000), NoRise("rad", 15_000, 30_000),
                  AtMost(("random_r", "rad"), 5e-3, 30_000))),
    Case("p3", "P3 oscillator, soft constraints", "harmonic", "harmonic_adaptive_quick", (
        Method("hand-set"),  # the problem's weights 1e6 on u(0) = 1, 1e2 on u'(0) = 0
        Method("self_adaptive", {"loss.weighting": "self_adaptive"}),
        Method("balanced", {"loss.weighting": "balanced"}),
    )),
)


def selected(cases: tuple[Case, ...], only: list[str] | None, methods: list[str] | None,
             quick: bool) -> list[tuple[Case, Method]]:
    """The (case, method) pairs an invocation trains, in table order."""
    return [(case, m) for case in cases if (not only or case.key in only) and (case.quick_config or not quick)
            for m in case.methods if not methods or m.name in methods]


# ----------------------------------------------------------------------------- configs
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Job:
    """One (case, method, seed) to train: its resolved config and how a user reruns it."""

    case: str
    method: str
    seed: int
    cfg: Config
    config: str  # the base config, relative to the repository
    overrides: tuple[str, ...]  # the method's --set overrides, resolved
    command: str


def method_overrides(method: Method, base: Config) -> list[str]:
    """``key=value`` strings of ``method`` on ``base`` (with :data:`SAME_INTERVAL` resolved)."""
    every = str(base.sampling.adaptive.every)
    return [f"{k}={every if v == SAME_INTERVAL else v}" for k, v in method.overrides.items()]


def make_job(case: Case, method: Method, seed: int, *, quick: bool, out: Path, threads: int) -> Job:
    path = CONFIGS / f"{case.quick_config if quick else case.config}.yaml"
    overrides = method_overrides(method, load_config(path))
    name = f"{case.key}_{slug(method.name)}_seed{seed}"
    run = [f"run.seed={seed}", f"run.name={name}"]
    cfg = load_config(path, [*overrides, *run, f"run.threads={threads}", f"run.output_dir={out / 'runs'}"])
    command = " ".join(["ddpinn train", str(path.relative_to(REPO)),
                        *(f"--set {shlex.quote(o)}" for o in [*overrides, *run])])
    return Job(case.key, method.name, seed, cfg, str(path.relative_to(REPO)), tuple(overrides), command)


def check_report_steps(case: Case, job: Job) -> None:
    """Full settings must evaluate the test error at every reported step (checked before training)."""
    every, steps = job.cfg.train.eval_every, job.cfg.train.steps
    for step in case.report_steps:
        if step > steps or (step != steps and (not every or step % every)):
            raise SystemExit(f"{job.config}: step {step} is reported but train.steps={steps}, "
                             f"train.eval_every={every} never evaluate it")


# ----------------------------------------------------------------------------- training
@dataclass
class Trained:
    """One trained (case, method, seed): its error curve and what summary.json says of the run."""

    job: Job
    run_dir: str
    steps: int
    wall_s: float  # the whole run_training call: build, test set, training, final outputs
    train_s: float
    points: int  # collocation points at the end, all ranks
    refresh_s: list[float]  # seconds of each point refresh (Random-R, RAD, RAR-D)
    sampling: str
    weighting: str
    curve: list[dict[str, float]]  # {"step", "rel_l2", "l1", "normalised_l1"} at evaluated steps
    commit: str
    reused: bool

    def at(self, step: int) -> dict[str, float] | None:
        return next((p for p in self.curve if p["step"] == step), None)


def train(job: Job, *, reuse: bool, commit: str) -> Trained:
    run_dir, cfg = job.cfg.run_dir, job.cfg
    meta = run_dir / "benchmark_meta.json"
    label = f"[{job.case} {job.method} seed {job.seed}]"
    reused = reuse and _finished_run_of(cfg) and meta.exists()
    if reused:
        stored = json.loads(meta.read_text())
        wall, commit = stored["wall_s"], stored["ddpinn_commit"]
    else:
        clear_run_dir(run_dir)
        print(f"{label} training {cfg.train.steps} steps -> {run_dir}", flush=True)
        t0 = time.perf_counter()
        run_training(cfg, base_dir=CONFIGS, quiet=True)
        wall = time.perf_counter() - t0
        meta.write_text(json.dumps({"ddpinn_commit": commit, "wall_s": wall}) + "\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = [{"step": r["step"], "rel_l2": r["rel_l2"], "l1": r["l1"], "normalised_l1": r["normalised_l1"]}
             for r in read_metrics(run_dir / "metrics.jsonl") if "rel_l2" in r]
    if not curve or curve[-1]["step"] != summary["step"]:
        raise SystemExit(f"{run_dir}/metrics.jsonl has no evaluation at the final step {summary['step']}")
    print(f"{label} {'reused, ' if reused else ''}{summary['step']} steps in {wall:.0f} s: "
          f"rel L2 {curve[-1]['rel_l2']:.3e}", flush=True)
    return Trained(job, str(run_dir), summary["step"], wall, summary["train_seconds"],
                   int(sum(summary["points_per_rank"])), list(summary.get("refresh_seconds", [])),
                   summary["points"], summary["weighting"], curve, commit, bool(reused))


def train_all(plan: list[tuple[Case, list[Job]]], *, jobs: int, reuse: bool,
              commit: str) -> Iterator[tuple[Case, list[Trained]]]:
    """Train every job of ``plan``; yield each case with its trained jobs, in plan order."""
    if jobs == 1:
        for case, case_jobs in plan:
            yield case, [train(j, reuse=reuse, commit=commit) for j in case_jobs]
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(case, [pool.submit(train, j, reuse=reuse, commit=commit) for j in case_jobs])
                   for case, case_jobs in plan]
        for case, pending in futures:
            yield case, [f.result() for f in pending]


# ----------------------------------------------------------------------------- rows and medians
@dataclass
class Row:
    """One (case, method, seed) at one reported step: what the JSON lists."""

    case: str
    method: str
    seed: int
    steps: int
    rel_l2: float
    normalised_l1: float
    l1: float
    wall_s: float | None  # final-step rows only
    train_s: float | None
    points: int | None  # collocation points at the end
    refresh_s: float | None  # total seconds of point refreshes
    refreshes: int | None
    sampling: str
    weighting: str
    mode: str  # "quick" or "full"
    config: str
    overrides: list[str]
    command: str
    run_dir: str
    ddpinn_commit: str


def rows_of(case: Case, trained: Trained, *, quick: bool) -> list[Row]:
    """The final step and (full mode) the case's reported steps of one trained seed."""
    steps = [] if quick else [s for s in case.report_steps if s < trained.steps]
    rows = []
    for step in [*steps, trained.steps]:
        point = trained.at(step)
        if point is None:
            raise SystemExit(f"{trained.run_dir}: no evaluation at step {step}")
        final = step == trained.steps
        j = trained.job
        rows.append(Row(
            j.case, j.method, j.seed, step, point["rel_l2"], point["normalised_l1"], point["l1"],
            trained.wall_s if final else None, trained.train_s if final else None,
            trained.points if final else None, sum(trained.refresh_s) if final else None,
            len(trained.refresh_s) if final else None, trained.sampling, trained.weighting,
            "quick" if quick else "full", j.config, list(j.overrides), j.command, trained.run_dir, trained.commit,
        ))
    return rows


@dataclass
class Summary:
    """One (case, method, step) over its seeds: medians, minima and maxima."""

    case: str
    method: str
    steps: int
    final: bool
    seeds: list[int]
    rel_l2: Spread
    normalised_l1: Spread
    wall_s: Spread | None
    points: Spread | None
    refresh_s: Spread | None
    command: str  # seed 0's (or the first seed's)


def summarise(rows: list[Row]) -> list[Summary]:
    """Rows grouped by (case, method, step), in the order they first appear."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.case, r.method, r.steps), []).append(r)
    out = []
    for (case, method, steps), mine in groups.items():
        final = mine[0].wall_s is not None  # run-level figures (time, points) belong to the final step
        spread = {name: Spread.of([getattr(r, name) for r in mine]) if final else None
                  for name in ("wall_s", "points", "refresh_s")}
        out.append(Summary(case, method, steps, final, [r.seed for r in mine], Spread.of([r.rel_l2 for r in mine]),
                           Spread.of([r.normalised_l1 for r in mine]), spread["wall_s"], spread["points"],
                           spread["refresh_s"], mine[0].command))
    return out


def judge(case: Case, summaries: list[Summary], *, quick: bool) -> list[Judgement]:
    """The case's targets against the medians over seeds; quick runs are shown, never judged."""

    def median(method: str, step: int | None) -> float | None:
        for s in summaries:
            if s.case == case.key and s.method == method and (s.final if step is None else s.steps == step):
                return s.rel_l2.median
        return None

    out = []
    for t in case.targets:
        measured, passed = t.judge(median)
        if quick:
            out.append(Judgement(t.describe(), measured, None, "quick settings; targets are for the full ones"))
        elif passed is None:
            out.append(Judgement(t.describe(), measured, None, "a method it needs did not run"))
        else:
            out.append(Judgement(t.describe(), measured, passed))
    return out


# ----------------------------------------------------------------------------- reports
def _spread(s: Spread | None, fmt: str = ".2e") -> str:
    if s is None:
        return "-"
    if s.min == s.max:
        return format(s.median, fmt)
    return f"{format(s.median, fmt)} ({format(s.min, fmt)}–{format(s.max, fmt)})"


def markdown(cases: list[Case], summaries: list[Summary], judgements: dict[str, list[Judgement]], header: str) -> str:
    lines = [header, "",
             ("| case | method | step | seeds | rel L2 median (min–max) | normalised L1 median (min–max) | "
              "wall s | points at end | resampling s |"),
             "|---|---|---:|---|---|---|---:|---:|---:|"]
    titles = {c.key: c.title for c in cases}
    for s in summaries:
        lines.append(f"| {titles[s.case]} | {s.method} | {s.steps} | {','.join(map(str, s.seeds))} | "
                     f"{_spread(s.rel_l2)} | {_spread(s.normalised_l1)} | {_spread(s.wall_s, '.0f')} | "
                     f"{_spread(s.points, '.0f')} | {_spread(s.refresh_s, '.1f')} |")
    lines += ["", "Targets (issue 7), judged on the median over seeds:", ""]
    for case in cases:
        for j in judgements.get(case.key, []):
            lines.append(f"- {case.title} — {j.target}: {j.measured} → **{j.verdict}**")
    lines += ["", "Rerun one row (seed 0 shown; add `--set run.threads=1` on a shared machine):", ""]
    for s in summaries:
        if s.final:
            lines.append(f"- {titles[s.case]}, {s.method}: `{s.command}`")
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plots written")
        return None
    return plt


def plot_curves(plt, groups: list[tuple[Case, list[Trained]]], path: Path) -> Path:
    """Test rel L2 vs Adam step per case: median over seeds (line), min-max band, AtMost bounds dashed."""
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.8), squeeze=False)
    for ax, (case, trained) in zip(axes[0], groups):
        methods = list(dict.fromkeys(t.job.method for t in trained))
        for colour, method in enumerate(methods):
            seeds = [t for t in trained if t.job.method == method]
            steps = sorted(set.intersection(*({p["step"] for p in t.curve} for t in seeds)))
            spreads = [Spread.of([t.at(s)["rel_l2"] for t in seeds]) for s in steps]
            ax.semilogy(steps, [sp.median for sp in spreads], color=f"C{colour}", label=f"{method} ({len(seeds)})")
            ax.fill_between(steps, [sp.min for sp in spreads], [sp.max for sp in spreads], color=f"C{colour}",
                            alpha=0.2)
        for t in case.targets:
            if isinstance(t, AtMost):
                ax.axhline(t.bound, color="k", lw=0.8, ls="--")
        ax.set_title(case.title, fontsize=10)
        ax.set_xlabel("step")
        ax.locator_params(axis="x", nbins=5)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, title="method (seeds)", title_fontsize=7)
    axes[0][0].set_ylabel("test rel L2 (median; band min-max;\ndashed: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def first_seeds(trained: list[Trained]) -> list[Trained]:
    """The run of each method with the lowest seed (the one the figures show)."""
    first: dict[str, Trained] = {}
    for t in sorted(trained, key=lambda t: t.job.seed):
        first.setdefault(t.job.method, t)
    return list(first.values())


def _exact_on_grid(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The test grid and the exact solution of a 2-D run from its results.h5: ([n0, n1, 2], [n0, n1])."""
    import h5py

    with h5py.File(Path(run_dir) / "results.h5", "r") as f:
        if "exact" not in f or f["x"].shape[-1] != 2:
            return None
        return f["x"][()], f["exact"][()][..., 0]


def plot_points(plt, groups: list[tuple[Case, list[Trained]]], path: Path) -> Path | None:
    """For the first seed of every RAD / RAR-D run of a 2-D case: the collocation points at up to
    four sampling events (first, last, evenly between) over the exact solution."""
    from ddpinn.io.plots import recorded_points

    panels = []
    for case, trained in groups:
        for t in first_seeds(trained):
            events = recorded_points(Path(t.run_dir))
            grid = _exact_on_grid(Path(t.run_dir)) if events else None
            if grid is not None:
                panels.append((case, t, events, grid))
    if not panels:
        return None
    cols = 4
    fig, axes = plt.subplots(len(panels), cols, figsize=(3.2 * cols, 2.8 * len(panels)), squeeze=False)
    for row, (case, t, events, (x, exact)) in enumerate(panels):
        keys = list(events)
        shown = [keys[i] for i in sorted(set(np.linspace(0, len(keys) - 1, min(cols, len(keys))).round().astype(int)))]
        for col in range(cols):
            ax = axes[row, col]
            if col >= len(shown):
                ax.axis("off")
                continue
            pts = events[shown[col]]
            ax.pcolormesh(x[..., 0], x[..., 1], exact, shading="auto", cmap="RdBu_r")
            ax.scatter(pts[:, 0], pts[:, 1], s=0.6, c="k", alpha=0.6, linewidths=0)
            ax.set_title(f"{case.key} {t.job.method}: event {shown[col]}, {len(pts)} pts", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("collocation points at sampling events over the exact solution (first seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(plt, groups: list[tuple[Case, list[Trained]]], path: Path) -> Path | None:
    """Self-adaptive runs (first seed): each collocation point's λ at the end, over the domain
    (2-D: colour; 1-D: λ against x). Balanced runs: each term's weight against the step."""
    from ddpinn.train.checkpoint import load_checkpoint

    panels = []
    for case, trained in groups:
        for t in first_seeds(trained):
            if t.weighting.startswith("self-adaptive"):
                arrays = load_checkpoint(Path(t.run_dir) / "checkpoint.h5").arrays
                if "points/pde/sa_lambda" in arrays:
                    # Soft constraints' λ (a point or a few each) go in the title, as their mean.
                    others = {key.split("/")[1]: float(np.mean(v)) for key, v in arrays.items()
                              if key.endswith("/sa_lambda") and key != "points/pde/sa_lambda"}
                    panels.append(("lambda", case, t, (arrays["points/pde/x"], arrays["points/pde/sa_lambda"], others)))
            elif t.weighting.startswith("balanced"):
                records = [r for r in read_metrics(Path(t.run_dir) / "metrics.jsonl") if "weighting" in r]
                if records:
                    panels.append(("balanced", case, t, records))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (kind, case, t, data) in zip(axes[0], panels):
        if kind == "lambda":
            x, lam, others = data
            if x.shape[1] == 2:
                sc = ax.scatter(x[:, 0], x[:, 1], c=lam, s=3, cmap="viridis", linewidths=0)
                fig.colorbar(sc, ax=ax, fraction=0.046, label="λ")
            else:
                ax.plot(x[:, 0], lam, ".", ms=3)
                ax.set_ylabel("λ")
            constraints = "".join(f"\n{name}: λ {value:.3g}" for name, value in others.items())
            ax.set_title(f"{case.key} self-adaptive λ of the PDE points at step {t.steps}{constraints}", fontsize=9)
        else:
            steps = [r["step"] for r in data]
            for name in data[0]["weighting"]:
                ax.semilogy(steps, [r["weighting"][name] for r in data], label=name)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
            ax.set_title(f"{case.key} balanced term weights", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="shortened settings (the *_quick base configs), 1 seed, no P4 L=4: <= 10 min on 2 cores")
    p.add_argument("--seeds", nargs="+", type=int,
                   help=f"run.seed values (default {' '.join(map(str, FULL_SEEDS))}; --quick: "
                        f"{' '.join(map(str, QUICK_SEEDS))})")
    p.add_argument("--only", nargs="+", metavar="CASE", choices=[c.key for c in CASES],
                   help=f"run only these cases ({', '.join(c.key for c in CASES)})")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   choices=sorted({m.name for c in CASES for m in c.methods}), help="run only these methods")
    p.add_argument("--jobs", type=int, help="runs trained at once, in separate processes (default: cores / --threads)")
    p.add_argument("--threads", type=int, default=1, help="run.threads of every run (default 1)")
    p.add_argument("--out", type=Path, help="runs, table and plots (default results/adaptive[_quick])")
    p.add_argument("--json", type=Path, help="the rows (default results/adaptive.json with --quick, "
                                             "else results/adaptive_full.json)")
    p.add_argument("--reuse", action="store_true", help="keep a run directory holding a finished run of the same config")
    args = p.parse_args(argv)
    args.jobs = args.jobs or max(1, (os.cpu_count() or 1) // max(args.threads, 1))
    if args.jobs < 1 or args.threads < 1:
        p.error(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    args.seeds = list(dict.fromkeys(args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)))
    args.out = args.out or Path("results/adaptive_quick" if args.quick else "results/adaptive")
    args.json = args.json or Path("results/adaptive.json" if args.quick else "results/adaptive_full.json")
    return args


def write_reports(args: argparse.Namespace, groups: list[tuple[Case, list[Trained]]], wall: float,
                  done: bool) -> list[Judgement]:
    """The JSON rows and the table, rewritten after every case (an interrupted run keeps the
    finished cases); the plots at the end. Returns the targets' judgements."""
    rows = [r for case, trained in groups for t in trained for r in rows_of(case, t, quick=args.quick)]
    summaries = summarise(rows)
    cases = [case for case, _ in groups]
    judgements = {case.key: judge(case, summaries, quick=args.quick) for case in cases}
    mode = "quick settings: the *_quick base configs" if args.quick else "full settings"
    commits = ", ".join(sorted({r.ddpinn_commit for r in rows}))
    header = (f"# ddpinn adaptive-training benchmark ({mode}{'' if done else ', in progress'})\n\n"
              f"Seeds {', '.join(map(str, args.seeds))}"
              f"{' (one seed: no spread, a single run)' if len(args.seeds) == 1 else '; median (min–max)'}; ddpinn "
              f"{commits}, torch {torch.__version__}, {platform.machine()} {os.cpu_count()} CPU(s), "
              f"run.threads={args.threads}, {args.jobs} run(s) at a time, eager float32; wall time {wall / 60:.1f} min. "
              f"`wall s`: the whole run (build, training, final outputs); `resampling s`: all point refreshes.")
    table = markdown(cases, summaries, judgements, header)
    (args.out / "adaptive.md").write_text(table)
    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    verdicts = [j for js in judgements.values() for j in js]
    if not done:
        return verdicts
    print("\n" + table)
    plt = _pyplot()
    if plt is None:
        return verdicts
    written = [plot_curves(plt, groups, args.out / "adaptive_curves.png"),
               plot_points(plt, groups, args.out / "adaptive_points.png"),
               plot_weights(plt, groups, args.out / "adaptive_weights.png")]
    print(f"wrote {args.json}, {args.out / 'adaptive.md'}, " + ", ".join(str(p) for p in written if p))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    chosen = selected(CASES, args.only, args.methods, args.quick)
    if not chosen:
        raise SystemExit("nothing to run: no method of the chosen cases matches --methods (or --quick skips them)")
    plan: dict[str, tuple[Case, list[Job]]] = {}
    for case, method in chosen:  # every config loads and checks its reported steps before anything trains
        for seed in args.seeds:
            job = make_job(case, method, seed, quick=args.quick, out=args.out, threads=args.threads)
            if not args.quick:
                check_report_steps(case, job)
            plan.setdefault(case.key, (case, []))[1].append(job)

    t0 = time.perf_counter()
    groups: list[tuple[Case, list[Trained]]] = []
    verdicts: list[Judgement] = []
    for case, trained in train_all(list(plan.values()), jobs=args.jobs, reuse=args.reuse, commit=code_version()):
        groups.append((case, trained))
        verdicts = write_reports(args, groups, time.perf_counter() - t0, done=len(groups) == len(plan))
    return 1 if any(j.passed is False for j in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
