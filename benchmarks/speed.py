"""Single-process speed: steady milliseconds per Adam step (float32, full batch), the same
normalised by a fixed machine-speed probe, µs per (point, subdomain) pair, start-up time
(interpreter start to the end of the first step, compile excluded), peak memory, and
torch.compile's compile time. Start-up includes what a run does before its first step (config,
model, training batch and test set) but not printing or the run directory.

    python benchmarks/speed.py                                  # all cases, eager and compiled
    python benchmarks/speed.py --cases p4_l4 p1 --threads 1 2 --load --repeats 3
    python benchmarks/speed.py --cases p4_l5 --modes eager --steps 300

Each (case, mode, threads) runs in a fresh process (so start-up and peak memory are its own)
through the real trainer step (learning-rate schedule, gradient sync, finiteness check, fused
Adam). The same process first times the probe: a fixed float32 workload (matrix products and
tanh) on one thread, best of 7, in ms. ``ms_per_probe`` = ms per step / probe ms is a figure
that compares across days and machines of one kind (this VM's speed changes by 2x from day to
day; the probe moves with it). ``--load`` runs ``python -c "while True: pass"`` beside every
measurement (a second program holding a core). Results go to ``--out`` (default
results/speed.json), one row per run with the date, CPU model, torch version, threads and the
load average before it.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    # name: (config, reference ms/step of the JAX FBPINN implementation and ddpinn target ms/step,
    # both from ../shared/reference/problems.md: absolute figures of another day's machine)
    "p1": ("configs/cos1d.yaml", 2.9, 1.5),
    "p3": ("configs/harmonic.yaml", 0.17, 0.35),
    "p4_l4": ("configs/poisson2d_L4.yaml", 7.7, 3.8),
    "p4_l5": ("configs/poisson2d_L5.yaml", 62.0, 20.0),
}


def worker(case: str, mode: str, steps: int, threads: int | None, budget_s: float) -> dict:
    import resource
    import tempfile

    import torch

    from ddpinn.build import build_experiment
    from ddpinn.cli import _load
    from ddpinn.perf import machine_probe_ms
    from ddpinn.session import make_layout, open_session
    from ddpinn.train.trainer import Trainer

    config = CASES[case][0]
    overrides = [f"train.compile={'on' if mode == 'compiled' else 'off'}"] + ([f"run.threads={threads}"] if threads else [])
    cfg, base = _load(str(ROOT / config), overrides)
    exp = build_experiment(cfg, base)
    with open_session(cfg) as session, tempfile.TemporaryDirectory() as tmp:
        comm, device = session.comm, session.device
        trainer = Trainer(exp, comm=comm, layout=make_layout(exp, 1), device=device, run_dir=Path(tmp), quiet=True)
        trainer.points.start(0, None)
        batch = trainer.points.batch
        trainer.train_step(0, batch)
        startup = time.perf_counter() - T_START - trainer.compile_seconds
        usage = resource.getrusage(resource.RUSAGE_SELF)
        # CPU seconds of this process from interpreter start (compile included where it compiled):
        # what start-up costs whatever else the machine runs.
        startup_cpu = usage.ru_utime + usage.ru_stime
        probe = machine_probe_ms()
        t0 = time.perf_counter()
        for step in range(1, 50):  # warm-up (allocator, caches, dynamic-shape recompiles)
            trainer.train_step(step, batch)
        warm_ms = 1e3 * (time.perf_counter() - t0) / 49
        # Five chunks of at most --steps steps in all, cut to the time budget (a collapsed step is slow).
        chunk = max(1, min(steps // 5, int(budget_s * 1e3 / 5 / warm_ms)))
        times = []
        for c in range(5):
            t0 = time.perf_counter()
            for step in range(chunk):
                trainer.train_step(50 + c * chunk + step, batch)
            times.append((time.perf_counter() - t0) / chunk)
        ms = 1e3 * statistics.median(times)
        return {
            "case": case, "config": config, "mode": mode, "ms_per_step": ms, "probe_ms": probe,
            "ms_per_probe": ms / probe, "timed_steps": 5 * chunk, "pairs": batch.n_pairs,
            "us_per_pair": 1e3 * ms / batch.n_pairs, "startup_s": startup,
            "startup_cpu_s": startup_cpu if mode == "eager" else None, "compile_s": trainer.compile_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "torch": torch.__version__,
        }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--steps", type=int, default=500, help="timed steps per case (after 50 warm-up steps)")
    p.add_argument("--budget", type=float, default=20.0, help="at most this many seconds of timed steps per run")
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="intra-op threads per run; 0 = ddpinn's default; several values compare them")
    p.add_argument("--repeats", type=int, default=1, help="runs per (case, mode, threads); medians are printed")
    p.add_argument("--load", action="store_true", help="run a CPU-burning process beside every measurement")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"], help="OMP_WAIT_POLICY for the workers")
    p.add_argument("--out", default="results/speed.json")
    p.add_argument("--worker", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.threads[0] or None, args.budget)))
        return
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    from ddpinn.perf import machine

    common = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "load": args.load}
    rows = []
    print(f"{'case':6} {'mode':8} {'thr':>3} {'ms/step':>22} {'probe ms':>8} {'ms/probe':>22} {'µs/pair':>7} "
          f"{'start s':>7} {'compile s':>9}  load")
    for case in args.cases:
        steps = args.steps if case != "p4_l5" else max(args.steps // 5, 50)
        for mode, threads in [(m, t) for m in args.modes for t in args.threads]:
            runs = []
            for _ in range(args.repeats):
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
                try:
                    load_before = os.getloadavg()[0]
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", case, mode, "--steps", str(steps),
                         "--threads", str(threads), "--budget", str(args.budget)],
                        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
                    ).stdout.strip().splitlines()[-1]
                finally:
                    if burner is not None:
                        burner.kill()
                        burner.wait()
                row = {**common, **json.loads(out), "load_average_before": load_before}
                row["reference_ms_other_day"], row["target_ms_other_day"] = CASES[case][1], CASES[case][2]
                runs.append(row)
            rows += runs
            med = sorted(runs, key=lambda r: r["ms_per_step"])[len(runs) // 2]
            print(f"{case:6} {mode:8} {med['threads']:>3} {spread([r['ms_per_step'] for r in runs])} "
                  f"{statistics.median(r['probe_ms'] for r in runs):8.2f} {spread([r['ms_per_probe'] for r in runs])} "
                  f"{med['us_per_pair']:7.4f} {statistics.median(r['startup_s'] for r in runs):7.2f} "
                  f"{statistics.median(r['compile_s'] for r in runs):9.1f}  "
                  f"{statistics.median(r['load_average_before'] for r in runs):.1f}{' +busy' if args.load else ''}",
                  flush=True)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out_path} (ms/step [min-max] over {args.repeats} run(s); ms/probe = ms/step / probe ms)")


if __name__ == "__main__":
    main()
