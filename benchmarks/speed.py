"""Single-process speed: steady milliseconds per Adam step (float32, full batch), µs per
(point, subdomain) pair, start-up time (interpreter start to the end of the first step), peak
memory, and torch.compile's compile time — against the targets of the reference table.

    python benchmarks/speed.py                      # all cases, eager and compiled
    python benchmarks/speed.py --cases p4_l5 --modes eager --steps 300

Each case runs in a fresh process (so start-up and peak memory are its own) through the real
trainer step (learning-rate schedule, gradient sync, finiteness check, fused Adam). Results go
to ``--out`` (default results/speed.json).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    # name: (config, reference ms/step of the JAX FBPINN implementation, ddpinn target ms/step)
    "p1": ("configs/cos1d.yaml", 2.9, 1.5),
    "p3": ("configs/harmonic.yaml", 0.17, 0.35),
    "p4_l4": ("configs/poisson2d_L4.yaml", 7.7, 3.8),
    "p4_l5": ("configs/poisson2d_L5.yaml", 62.0, 20.0),
}


def worker(case: str, mode: str, steps: int, threads: int | None) -> dict:
    import resource
    import tempfile

    import torch

    from ddpinn.build import build_experiment
    from ddpinn.cli import _load
    from ddpinn.session import make_layout, open_session
    from ddpinn.train.trainer import Trainer

    config = CASES[case][0]
    overrides = [f"train.compile={'on' if mode == 'compiled' else 'off'}"] + ([f"run.threads={threads}"] if threads else [])
    cfg, base = _load(str(ROOT / config), overrides)
    exp = build_experiment(cfg, base)
    with open_session(cfg) as session, tempfile.TemporaryDirectory() as tmp:
        comm, device = session.comm, session.device
        trainer = Trainer(exp, comm=comm, layout=make_layout(exp, 1), device=device, run_dir=Path(tmp), quiet=True)
        batch = trainer.batches.training_batch(0)
        trainer.train_step(0, batch)
        startup = time.perf_counter() - T_START - trainer.compile_seconds
        for step in range(1, 50):  # warm-up (allocator, caches, dynamic-shape recompiles)
            trainer.train_step(step, batch)
        chunk = max(steps // 5, 1)
        times = []
        for c in range(5):
            t0 = time.perf_counter()
            for step in range(chunk):
                trainer.train_step(50 + c * chunk + step, batch)
            times.append((time.perf_counter() - t0) / chunk)
        ms = 1e3 * statistics.median(times)
        return {
            "case": case, "config": config, "mode": mode, "ms_per_step": ms, "pairs": batch.n_pairs,
            "us_per_pair": 1e3 * ms / batch.n_pairs, "startup_s": startup, "compile_s": trainer.compile_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--steps", type=int, default=500, help="timed steps per case (after 50 warm-up steps)")
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="intra-op threads per run; 0 = the default (all cores); several values compare them")
    p.add_argument("--out", default="results/speed.json")
    p.add_argument("--worker", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.threads[0] or None)))
        return
    rows = []
    print(f"{'case':8} {'mode':9} {'thr':>3} {'pairs':>7} {'ms/step':>8} {'target':>7} {'ref JAX':>8} {'µs/pair':>8} "
          f"{'start s':>7} {'compile s':>9} {'peak MB':>8}")
    for case in args.cases:
        steps = args.steps if case != "p4_l5" else max(args.steps // 5, 50)
        for mode, threads in [(m, t) for m in args.modes for t in args.threads]:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", case, mode, "--steps", str(steps), "--threads", str(threads)],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            row["reference_ms"], row["target_ms"] = CASES[case][1], CASES[case][2]
            row["meets_target"] = row["ms_per_step"] <= row["target_ms"]
            rows.append(row)
            print(f"{case:8} {mode:9} {row['threads']:>3} {row['pairs']:>7} {row['ms_per_step']:8.3f} {row['target_ms']:7.2f} "
                  f"{row['reference_ms']:8.2f} {row['us_per_pair']:8.4f} {row['startup_s']:7.2f} "
                  f"{row['compile_s']:9.1f} {row['peak_rss_mb']:8.0f}  {'PASS' if row['meets_target'] else 'FAIL'}",
                  flush=True)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
