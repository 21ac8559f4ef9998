"""RAD on P4 L=5 on one process and on two ranks: the same final error, and what a resampling costs.

    python benchmarks/adaptive_ranks.py            # 6,000 Adam steps, RAD every 1,000 (~25 min on 2 cores)
    python benchmarks/adaptive_ranks.py --quick    # 1,200 steps, RAD every 300 (~6 min)

Trains ``configs/poisson2d_L5.yaml`` with uniform collocation points (the same 6,400 as its 80²
grid) and RAD (10x candidates, Wu et al.'s density), float32, eager, one thread per rank: once as
one process and once under ``mpiexec -n 2`` (``parallel.comm: mpi``). From each run's
``summary.json`` and ``metrics.jsonl`` it reports the final rel L2, the wall time of every
resampling (scoring the candidates through the halo exchange, drawing, building the new batch and
exchange plan) and the median step time between resamplings, and their ratio: a resampling's
cost in training steps. Writes ``results/adaptive_ranks.json`` (one row per run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/poisson2d_L5.yaml"


def overrides(steps: int, every: int, out: Path, name: str) -> list[str]:
    return [
        "sampling.method=uniform", "sampling.n=6400", "sampling.adaptive.method=rad",
        f"sampling.adaptive.every={every}", f"train.steps={steps}", "train.log_every=50",
        f"train.eval_every={steps}", "train.compile=off", "run.threads=1", "run.plots=false",
        f"run.output_dir={out}", f"run.name={name}", "parallel.comm=mpi",
    ]


def run(ranks: int, steps: int, every: int, out: Path) -> dict:
    name = f"rad_r{ranks}"
    args = [a for o in overrides(steps, every, out, name) for a in ("--set", o)]
    ddpinn = [sys.executable, "-m", "ddpinn.cli", "train", CONFIG, *args, "--overwrite", "--quiet"]
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = ddpinn if ranks == 1 else [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *ddpinn]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    run_dir = out / name
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Step time from the logged throughput, leaving out the log intervals that hold a resampling.
    steady = [1e3 / r["steps_per_s"] for r in records
              if r.get("steps_per_s") and r["step"] % every > 50 and r["step"] > 100]
    step_ms = statistics.median(steady)
    refresh = summary["refresh_seconds"]
    return {
        "ranks": ranks, "steps": summary["step"], "rel_l2": summary["errors"]["rel_l2"], "wall_s": wall,
        "train_s": summary["train_seconds"], "step_ms": step_ms, "resampling_s": refresh,
        "resampling_in_steps": [1e3 * s / step_ms for s in refresh], "points_per_rank": summary["points_per_rank"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/adaptive_ranks")
    p.add_argument("--json", default="results/adaptive_ranks.json")
    args = p.parse_args()
    steps, every = (1200, 300) if args.quick else (6000, 1000)
    out = (ROOT / args.out).resolve()
    rows = [run(r, steps, every, out) for r in (1, 2)]
    Path(ROOT / args.json).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nP4 L=5, RAD every {every} steps, {steps} steps, float32 (wrote {args.json})")
    print("ranks  rel L2     step ms  resampling s (each)            in steps (median)")
    for r in rows:
        each = ", ".join(f"{s:.2f}" for s in r["resampling_s"])
        print(f"{r['ranks']:>5}  {r['rel_l2']:.3e}  {r['step_ms']:7.1f}  {each:<30} "
              f"{statistics.median(r['resampling_in_steps']):.1f}")
    a, b = rows
    print(f"rel L2 2 ranks / 1 process: {b['rel_l2'] / a['rel_l2']:.4f}")


if __name__ == "__main__":
    main()
