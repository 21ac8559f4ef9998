"""Cold start: the README's first command on an empty torch compile cache, timed end to end.

    python benchmarks/cold_start.py                    # 3 runs, alone
    python benchmarks/cold_start.py --load             # 3 runs beside a CPU-burning process
    python benchmarks/cold_start.py --quick            # one run
    python benchmarks/cold_start.py --cache warm       # reuse one cache: compile cache hits

Each run starts ``ddpinn train CONFIG`` (the console script of this interpreter's environment)
in a subprocess with a fresh run directory and, for ``--cache cold``, fresh torch caches
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, and TORCH_HOME under a new temporary directory),
and measures the wall time from starting the command to its exit (its last line). Compile time,
step mode and errors come from the run's summary.json; steps/s is steps over the training time
without the compile. ``--load`` runs ``python -c "while True: pass"`` during every run, so one of
the two cores of this machine is taken, as when another program is busy.

Writes ``--out`` (default results/cold_start.json): one row per run with wall_s, compile_s,
steps_per_s, cache ("cold" or "warm"), load, threads, rel_l2, the run's output, date, machine
(CPU model), torch version and the load average before the run; prints the median, min and max over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_CONFIG = "configs/poisson2d_L4_quick.yaml"


def load_average() -> float:
    """The 1-minute load average (runnable processes); 2 means both cores of this machine busy."""
    return os.getloadavg()[0]


def ddpinn_command() -> list[str]:
    """The ``ddpinn`` console script next to this interpreter (what the README runs)."""
    script = Path(sys.executable).parent / "ddpinn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ddpinn.cli"]


def torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def threads_of(overrides: list[str]) -> int:
    """The CPU threads the run uses: ``run.threads`` if overridden, else ddpinn's default here."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "run.threads" and value.strip().isdigit():
            return int(value)
    from ddpinn.perf import available_cores, default_threads

    return default_threads(configured=None, omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                           cores=available_cores(), local_ranks=1)


def run_once(config: str, overrides: list[str], cache_dir: Path, work: Path, load: bool,
             source: str | None = None) -> dict:
    """One ``ddpinn train`` run with its torch caches under ``cache_dir`` (and the ddpinn package
    from ``source`` if given); returns its row."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    env.update(
        TORCHINDUCTOR_CACHE_DIR=str(cache_dir / "inductor"),
        TRITON_CACHE_DIR=str(cache_dir / "triton"),
        TORCH_HOME=str(cache_dir / "torch_home"),
    )
    runs = work / "runs"
    cmd = [*ddpinn_command(), "train", config, "--set", f"run.output_dir={runs}"]
    for item in overrides:
        cmd += ["--set", item]
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None
    try:
        load_before = load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"cold_start: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    (summary_path,) = runs.glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    loop_seconds = summary["train_seconds"] - summary["compile_seconds"]
    return {
        "command": " ".join(["ddpinn", *cmd[len(ddpinn_command()):]]),
        "wall_s": wall,
        "compile_s": summary["compile_seconds"],
        "step_mode": summary["step_mode"],
        "steps": summary["step"],
        "steps_per_s": summary["step"] / loop_seconds if loop_seconds > 0 else None,
        "train_s": summary["train_seconds"],
        "rel_l2": (summary.get("errors") or {}).get("rel_l2"),
        "threads": None if source else threads_of(overrides),
        "source": source or str(ROOT),
        "load": load,
        "load_average_before": load_before,
        "plots": sorted(p.name for p in (summary_path.parent / "plots").glob("*.png")),
        "output": proc.stdout.strip().splitlines(),
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=README_CONFIG, help=f"config to train (default: the README's, {README_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to ddpinn train (e.g. run.threads=2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run (the full benchmark is --repeats runs)")
    p.add_argument("--load", action="store_true", help="run a CPU-burning process beside every run")
    p.add_argument("--cache", choices=["cold", "warm"], default="cold",
                   help="cold: fresh caches per run; warm: one cache for all runs, filled by an untimed run first")
    p.add_argument("--source", help="run the ddpinn package from this directory (an older checkout, to compare)")
    p.add_argument("--out", default="results/cold_start.json")
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    from ddpinn.perf import machine
    common = {
        "config": args.config,
        "cache": args.cache,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "torch": torch_version(),
        "python": platform.python_version(),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddpinn_cold_start_") as tmp:
        shared_cache = Path(tmp) / "cache"
        if args.cache == "warm":
            run_once(args.config, args.overrides, shared_cache, Path(tmp) / "fill", load=False, source=args.source)
        for i in range(repeats):
            work = Path(tmp) / f"run{i}"
            cache = shared_cache if args.cache == "warm" else work / "cache"
            row = {**common, **run_once(args.config, args.overrides, cache, work, args.load, args.source)}
            rows.append(row)
            print(f"run {i + 1}/{repeats}: wall {row['wall_s']:.1f} s, compile {row['compile_s']:.1f} s "
                  f"({row['step_mode']}), {row['steps_per_s']:.0f} steps/s, rel L2 {row['rel_l2']:.3e}, "
                  f"threads {row['threads'] or 'default'}, load average before {row['load_average_before']:.2f}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.config}, {args.cache} cache{', beside a busy process' if args.load else ''}, {repeats} run(s): "
          f"wall s {spread([r['wall_s'] for r in rows])}; compile s {spread([r['compile_s'] for r in rows])}; "
          f"steps/s {spread([r['steps_per_s'] for r in rows])}")
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
