"""Finite-difference derivatives vs exact jets: milliseconds per Adam step and training time to a
given test error, on P1 (cos1d) and P4 L=4 (poisson2d_L4), one process.

    python benchmarks/fd_vs_jets.py --quick            # <= ~4 min: one seed, eager
    python benchmarks/fd_vs_jets.py --seeds 0 1 2 --modes eager compiled

Each (case, derivatives, mode, seed) runs in a fresh process (niced, one intra-op thread) through
the real trainer step. It trains from step 0 and evaluates the test rel L2 every ``eval_every``
steps, with the clock stopped: ``seconds_to_target`` (wall) and ``cpu_seconds_to_target`` (this
process's CPU time, which moves less with the load of this shared 2-core machine) are the
training time, the first step (compile) excluded, until the rel L2 first reaches the case's target;
``ms_per_step`` is the median over the evaluation intervals after the first. Because the load
moves by 2x within minutes, the step times are also measured interleaved: one process builds
every variant of a case and times them in turns (``--rounds`` rounds of ``--chunk`` steps after
warm-up); ``ms_per_step_interleaved`` / ``cpu_ms_per_step_interleaved`` are each variant's
medians over the rounds (the figures to compare). Rows go to ``--out`` (default
results/fd_vs_jets.json) as ``{case, quantity, value, truth, rel_err, ...}`` like
benchmarks/inverse.py: ``truth`` is the jets figure of the same seed and mode and ``rel_err`` =
value / truth - 1 (negative: fd is faster).

The deck's 2-4x speed-up of finite differences is over automatic differentiation (nested
backward passes); ddpinn's jets are forward-mode Taylor rows computed with the value, so what
is compared here is value-only passes at 1 + 2·dim (+ mixed) stencil points against one jet pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    # name: config, target rel L2, overrides (the run's Adam steps set the schedule's length).
    "p1": ("configs/cos1d.yaml", 1e-2, ["optimizer.lr=3e-3"]),
    "p4_l4": ("configs/poisson2d_L4.yaml", 2e-2, ["optimizer.lr=4e-3"]),
}
QUICK = {  # fewer points / steps so that --quick fits in ~4 minutes on 2 busy cores
    "p1": {"overrides": ["sampling.n=1000"], "max_steps": 4000, "eval_every": 250},
    "p4_l4": {"overrides": [], "max_steps": 1500, "eval_every": 250},
}
FULL = {
    "p1": {"overrides": [], "max_steps": 10000, "eval_every": 250},
    "p4_l4": {"overrides": [], "max_steps": 10000, "eval_every": 500},
}


def variant_overrides(variant: str) -> list[str]:
    """``jets`` or ``fd:<fd_step>``."""
    if variant == "jets":
        return ["model.derivatives=jets"]
    return ["model.derivatives=fd", f"model.fd_step={float(variant.split(':')[1])}"]


def worker(case: str, variant: str, mode: str, seed: int, max_steps: int, eval_every: int, extra: list[str]) -> dict:
    import tempfile

    import torch

    from ddpinn.build import build_experiment
    from ddpinn.cli import _load
    from ddpinn.session import make_layout, open_session
    from ddpinn.train.trainer import Trainer

    config, target, overrides = CASES[case]
    overrides = [*overrides, *extra, *variant_overrides(variant), f"train.steps={max_steps}", f"run.seed={seed}",
                 "run.threads=1", f"train.compile={'on' if mode == 'compiled' else 'off'}"]
    cfg, base = _load(str(ROOT / config), overrides)
    exp = build_experiment(cfg, base)
    with open_session(cfg) as session, tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(exp, comm=session.comm, layout=make_layout(exp, 1), device=session.device,
                          run_dir=Path(tmp), quiet=True)
        trainer.points.start(0, None)
        batch = trainer.points.batch
        trainer.train_step(0, batch)  # outside both clocks: it compiles when compiling is on
        train_s, cpu_s, interval_ms, curve, reached = 0.0, 0.0, [], [], None
        for start in range(0, max_steps, eval_every):
            t0, c0 = time.perf_counter(), time.process_time()
            for step in range(max(start, 1), min(start + eval_every, max_steps)):
                trainer.train_step(step, batch)
            seconds = time.perf_counter() - t0
            train_s += seconds
            cpu_s += time.process_time() - c0
            interval_ms.append(1e3 * seconds / (step + 1 - max(start, 1)))
            rel_l2 = trainer.evaluate(trainer.test_set).rel_l2
            curve.append((step + 1, train_s, rel_l2))
            if rel_l2 <= target:
                reached = (step + 1, train_s, cpu_s)
                break
        steady = interval_ms[1:] or interval_ms
        return {
            "case": case, "variant": variant, "mode": trainer.step_mode, "seed": seed, "target_rel_l2": target,
            "ms_per_step": statistics.median(steady), "steps_to_target": reached and reached[0],
            "seconds_to_target": reached and reached[1], "cpu_seconds_to_target": reached and reached[2],
            "final_rel_l2": curve[-1][2], "curve": curve,
            "stencil_points_per_point": (batch.n_own_rows / batch.n_own), "pairs": batch.n_pairs,
            "jet_rows": len(exp.spec), "compile_s": trainer.compile_seconds, "torch": torch.__version__,
        }


def timing_worker(case: str, variants: list[str], mode: str, chunk: int, rounds: int, extra: list[str]) -> dict:
    """ms/step of each variant of ``case``, timed in turns in this one process: {variant: {"wall" or
    "cpu": [ms per round]}} (CPU time of this one-thread process moves less with the machine's load)."""
    import tempfile

    from ddpinn.build import build_experiment
    from ddpinn.cli import _load
    from ddpinn.session import make_layout, open_session
    from ddpinn.train.trainer import Trainer

    config, _, overrides = CASES[case]
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as sessions:
        for variant in variants:
            cfg, base = _load(str(ROOT / config), [*overrides, *extra, *variant_overrides(variant), "run.threads=1",
                                                   f"train.compile={'on' if mode == 'compiled' else 'off'}"])
            exp = build_experiment(cfg, base)
            session = sessions.enter_context(open_session(cfg))
            trainer = Trainer(exp, comm=session.comm, layout=make_layout(exp, 1), device=session.device,
                              run_dir=Path(tmp) / variant.replace(":", "_"), quiet=True)
            trainer.points.start(0, None)
            for step in range(20):  # compile (if on) and warm-up
                trainer.train_step(step, trainer.points.batch)
            trainers[variant] = trainer
        times: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in variants}
        for r in range(rounds):
            for variant, trainer in trainers.items():
                t0, c0 = time.perf_counter(), time.process_time()
                for step in range(chunk):
                    trainer.train_step(20 + r * chunk + step, trainer.points.batch)
                times[variant]["wall"].append(1e3 * (time.perf_counter() - t0) / chunk)
                times[variant]["cpu"].append(1e3 * (time.process_time() - c0) / chunk)
    return times


def interleaved_times(case: str, variants: list[str], mode: str, chunk: int, rounds: int,
                      extra: list[str]) -> dict[str, dict[str, list[float]]]:
    """:func:`timing_worker` in a fresh, niced, one-thread process: {variant: {"wall" | "cpu": [ms
    per step of each round]}}."""
    cmd = ["nice", sys.executable, __file__, "--timing-worker", case, json.dumps(variants), mode, str(chunk),
           str(rounds), json.dumps(extra)]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_time_rows(quick: bool) -> list[dict]:
    """benchmarks/inverse.py's rows for the fd case: each fd variant's interleaved ms/step (wall and
    CPU, median over the rounds) on P1 and P4 L=4, ``truth`` the jets figure and ``rel_err`` =
    fd / jets - 1. Time to a given error is this script's own (longer) job."""
    variant = "fd:0.02"
    rows = []
    for case in CASES:
        settings = (QUICK if quick else FULL)[case]
        times = interleaved_times(case, ["jets", variant], "eager", 20 if quick else 40, 3 if quick else 5,
                                  settings["overrides"])
        for clock in ("wall", "cpu"):
            jets, fd = (statistics.median(times[v][clock]) for v in ("jets", variant))
            rows.append({"case": f"fd_vs_jets/{case}", "quantity": f"{variant} {clock} ms/step", "value": fd,
                         "truth": jets, "rel_err": fd / jets - 1})
    return rows


def rows_of(runs: list[dict]) -> list[dict]:
    """The inverse.py-style rows: each fd figure against the jets figure of its seed and mode."""
    jets = {(r["case"], r["mode"], r["seed"]): r for r in runs if r["variant"] == "jets"}
    rows = []
    for r in runs:
        ref = jets.get((r["case"], r["mode"], r["seed"]))
        for quantity in ("ms_per_step", "ms_per_step_interleaved", "cpu_ms_per_step_interleaved", "seconds_to_target",
                         "cpu_seconds_to_target"):
            value, truth = r[quantity], ref and ref[quantity]
            rows.append({
                "case": f"fd_vs_jets/{r['case']}/{r['variant']}/{r['mode']}/seed{r['seed']}", "quantity": quantity,
                "value": value, "truth": truth,
                "rel_err": value / truth - 1 if value is not None and truth else None,
                **{k: r[k] for k in ("steps_to_target", "final_rel_l2", "target_rel_l2", "stencil_points_per_point",
                                     "pairs", "compile_s")},
            })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--variants", nargs="+", help="jets, or fd:<model.fd_step> (default: jets fd:0.01 fd:0.03; "
                   "--quick: jets fd:0.02)")
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--quick", action="store_true", help="P1 on 1,000 points, P4 L=4 for 1,500 steps at most")
    p.add_argument("--out", default="results/fd_vs_jets.json")
    p.add_argument("--chunk", type=int, default=40, help="steps per variant per round of the interleaved timing")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the interleaved timing")
    p.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    p.add_argument("--timing-worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.timing_worker:
        case, variants, mode, chunk, rounds, extra = args.timing_worker
        times = timing_worker(case, json.loads(variants), mode, int(chunk), int(rounds), json.loads(extra))
        print(json.dumps(times))
        return
    if args.worker:
        case, variant, mode, seed, max_steps, eval_every, extra = args.worker
        print(json.dumps(worker(case, variant, mode, int(seed), int(max_steps), int(eval_every), json.loads(extra))))
        return
    settings = QUICK if args.quick else FULL
    args.variants = args.variants or (["jets", "fd:0.02"] if args.quick else ["jets", "fd:0.01", "fd:0.03"])
    runs = []
    print(f"{'case':6} {'variant':8} {'mode':8} seed {'ms/step':>8} {'steps':>6} {'s to target':>11} "
          f"{'CPU s':>7} {'final':>9}")
    for case in args.cases:
        s = settings[case]
        for mode in args.modes:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            interleaved = interleaved_times(case, args.variants, mode, args.chunk, args.rounds, s["overrides"])
            print(f"{case} {mode} interleaved ms/step (median [min-max] of {args.rounds} rounds): " + "; ".join(
                f"{v} {statistics.median(t['wall']):.2f} [{min(t['wall']):.2f}-{max(t['wall']):.2f}], CPU "
                f"{statistics.median(t['cpu']):.2f} [{min(t['cpu']):.2f}-{max(t['cpu']):.2f}]"
                for v, t in interleaved.items()), flush=True)
            for seed in args.seeds:
                for variant in args.variants:
                    cmd = ["nice", sys.executable, __file__, "--worker", case, variant, mode, str(seed),
                           str(s["max_steps"]), str(s["eval_every"]), json.dumps(s["overrides"])]
                    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    r["ms_per_step_interleaved"] = statistics.median(interleaved[variant]["wall"])
                    r["cpu_ms_per_step_interleaved"] = statistics.median(interleaved[variant]["cpu"])
                    r["ms_per_step_rounds"] = interleaved[variant]
                    runs.append(r)
                    to = (f"{r['seconds_to_target']:11.1f} {r['cpu_seconds_to_target']:7.1f}"
                          if r["seconds_to_target"] is not None else f"{'not reached':>11} {'-':>7}")
                    print(f"{case:6} {variant:8} {r['mode']:8} {seed:4} {r['ms_per_step']:8.2f} "
                          f"{r['steps_to_target'] or '-'!s:>6} {to} {r['final_rel_l2']:9.2e}", flush=True)
    common = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick}
    out_path = ROOT / args.out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**common, "rows": rows_of(runs), "runs": runs}, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
