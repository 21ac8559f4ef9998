"""Set-up cost by problem size and rank count: planning (``ddpinn check``) and a training run's
per-rank set-up, no training.

    python benchmarks/setup_scaling.py --quick    # check at L = 5..9; set-up at L = 5, 6 on 1 and 4 ranks
    python benchmarks/setup_scaling.py            # check at L = 5..9 up to 256 ranks; set-up at L = 6..8 on 1, 4, 16 ranks

The problem is P4 (``configs/poisson2d_L7.yaml``) with L levels, frequencies 2..2^(L-1) and
n = 40·2^(L-4) grid points per axis (the ``configs/poisson2d_L*.yaml`` family; L = 9: 1280²).

(a) ``check`` rows: ``python -m ddpinn.cli check ... --ranks R`` in a fresh process: wall time
from interpreter start to exit (imports included), its CPU time and peak RSS.

(b) ``setup`` rows: under ``mpiexec -n R`` (one process for R = 1) every rank builds what its
first training step needs, through the trainer's own code: the experiment, the layout, a
:class:`~ddpinn.train.trainer.Trainer` (model, gradient sync, optimisers, batch factory) and its
initial points with their training batch and halo exchange plan (``TrainingPoints.start``). The
test set is left out (the trainer builds it at the first evaluation). Per rank: CPU seconds after
the imports (``time.process_time``: R ranks on 2 cores stretch the wall time, not the CPU time)
without opening the session (MPI_Init and the communicator: MPICH busy-polls while it waits for
the slower ranks' imports, so its CPU time measures the machine's load; it is kept per rank in
``phases_s``), and peak RSS over the RSS after the imports (torch._dynamo included, which the
first optimiser imports). Each rank is compared with the prediction

    predicted = (rank's pairs / total pairs) × (the one-process figure at the same L) + C_R

where the constant C_R is the same measurement on a tiny case (P4 L = 3, 40²) under the same
``mpiexec -n R``: what a rank costs whatever its share (its session, communicator, trainer
objects). Rows go to ``results/setup_scaling.json`` (``--out``) as a list.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/poisson2d_L7.yaml"
TINY_LEVELS, TINY_POINTS = 3, 40


def points_per_axis(levels: int) -> int:
    return 40 * 2 ** (levels - 4)


def overrides(levels: int, points: int) -> list[str]:
    freqs = ",".join(str(2**i) for i in range(1, levels))
    return [f"decomposition.levels={levels}", f"sampling.n=[{points},{points}]", f"problem.params.frequencies=[{freqs}]"]


def load() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------- (a) check
def child_check(argv: list[str]) -> None:
    """Run ``ddpinn check`` in this process and print its CPU time and peak RSS as JSON."""
    import resource

    from ddpinn.cli import main

    status = main(argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"status": status, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}))


def measure_check(levels: int, ranks: int) -> dict:
    points = points_per_axis(levels)
    args = ["check", CONFIG, *[a for o in overrides(levels, points) for a in ("--set", o)], "--ranks", str(ranks)]
    before = load()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child-check", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    child = json.loads(done.stdout.strip().splitlines()[-1])
    total = next((int(line.split("total pairs")[1].split()[0]) for line in done.stdout.splitlines()
                  if "total pairs" in line), None)
    row = {"kind": "check", "levels": levels, "points": points * points, "ranks": ranks, "setup_s": wall,
           "cpu_s": child["cpu_s"], "peak_mb": child["peak_mb"], "predicted_mb": None, "total_pairs": total,
           "load_before": before, "command": "ddpinn " + " ".join(args)}
    print(f"check  L={levels} {points}² ranks {ranks:>3}: {wall:6.1f} s wall, {child['cpu_s']:5.1f} s CPU, "
          f"{child['peak_mb']:6.0f} MB peak (load {before:.1f})", flush=True)
    return row


# ---------------------------------------------------------------------------------- (b) per-rank set-up
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rank_setup(levels: int, points: int, out: Path) -> None:
    """One rank's set-up up to the first step; rank 0 writes every rank's figures to ``out``."""
    import resource

    import torch
    import torch._dynamo  # the first optimiser imports it (1.5 s, ~100 MB on any rank): counted with the imports

    from ddpinn.build import build_experiment
    from ddpinn.config import load_config
    from ddpinn.parallel.exchange import plan
    from ddpinn.session import make_layout, open_session
    from ddpinn.train.trainer import Trainer

    # CPU time inside the batch's local work; the rest of its phase is the halo coordinate exchange
    # and the sum of the counts, where MPICH busy-polls while it waits for the other ranks.
    local: dict[str, float] = {"halo_requests": 0.0, "build_batch": 0.0}

    def timed(name: str, fn):
        def run(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                local[name] += time.process_time() - t0
        return run

    plan.halo_requests = timed("halo_requests", plan.halo_requests)
    plan.build_batch = timed("build_batch", plan.build_batch)
    rss_after_imports, cpu0 = _rss_mb(), time.process_time()
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases[name] = time.process_time() - cpu0 - sum(phases.values())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / CONFIG, [*overrides(levels, points), f"run.output_dir={tmp}", "run.name=setup",
                                          "run.threads=1", "train.compile=off", "run.plots=false"])
        exp = build_experiment(cfg)
        mark("experiment")
        with open_session(cfg) as session:
            comm = session.comm
            mark("session")
            layout = make_layout(exp, comm.world_size)
            mark("layout")
            trainer = Trainer(exp, comm=comm, layout=layout, device=session.device, run_dir=Path(tmp) / "setup",
                              quiet=True)
            mark("trainer")
            trainer.points.start(0, None)
            mark("points and batch")
            batch = trainer.points.batch
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            waiting = phases["points and batch"] - sum(local.values())  # upper bound: includes sampling the own points
            record = {
                "rank": comm.rank, "cpu_s": time.process_time() - cpu0 - phases["session"], "phases_s": phases,
                "batch_local_s": local, "compute_s": time.process_time() - cpu0 - phases["session"] - waiting,
                "peak_mb": peak - rss_after_imports, "rss_after_imports_mb": rss_after_imports,
                "pairs": int(batch.n_pairs), "own_points": int(batch.n_own), "halo_points": int(batch.n_eval - batch.n_own),
                "parameters": int(sum(p.numel() for p in trainer.model.parameters())),
                "threads": torch.get_num_threads(),
            }
            records = comm.allgather_object(record)
            if comm.rank == 0:
                out.write_text(json.dumps({"layout": layout.describe(), "ranks": records}))


def rank_alone(levels: int, points: int, ranks: int, rank: int) -> None:
    """Build ``rank``'s training batch (of ``ranks``) in this one process, nothing else running
    here: its CPU seconds without the oversubscription of R ranks on a few cores (printed as JSON)."""
    import numpy as np
    import torch

    from ddpinn.build import build_experiment
    from ddpinn.config import load_config
    from ddpinn.model.batch import build_batch
    from ddpinn.parallel.exchange.plan import halo_requests
    from ddpinn.session import make_layout

    torch.set_num_threads(1)
    exp = build_experiment(load_config(ROOT / CONFIG, overrides(levels, points)))
    layout = make_layout(exp, ranks)

    def own(r: int) -> np.ndarray:
        return np.concatenate(list(exp.training_points(0, layout.block(r)).values()))

    # The halo points the neighbours would send (what build_distributed_batch receives).
    halo = [own(q)[rows] for q in layout.neighbours(rank) if (rows := halo_requests(layout, q, own(q)).get(rank)) is not None]
    groups = exp.training_points(0, layout.block(rank))
    seconds = []
    for _ in range(2):
        t0 = time.process_time()
        build_batch(exp.problem, exp.decomposition, exp.window, exp.spec, groups, held=layout.held(rank),
                    halo=np.concatenate(halo) if halo else None,
                    halo_levels=[layout.is_partitioned(l) for l in range(exp.decomposition.n_levels)], dtype=exp.dtype)
        seconds.append(time.process_time() - t0)
    print(json.dumps({"build_batch_s": min(seconds)}))


def measure_alone(case: dict) -> None:
    """For a rank count above the cores: the slowest rank's batch built again alone, and its
    set-up CPU with that figure in place of the oversubscribed one (``alone_cpu_s``)."""
    worst = max(case["per_rank"], key=lambda r: r["cpu_s"])
    done = subprocess.run([sys.executable, __file__, "--rank-alone", str(case["levels"]), str(case["points_per_axis"]),
                           str(case["ranks"]), str(worst["rank"])], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    alone = json.loads(done.stdout.strip().splitlines()[-1])["build_batch_s"]
    worst["alone_build_batch_s"] = alone
    worst["alone_cpu_s"] = worst["cpu_s"] - worst["batch_local_s"]["build_batch"] + alone


def run_setup(levels: int, points: int, ranks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        cmd = [sys.executable, __file__, "--rank-setup", str(levels), str(points), str(out)]
        if ranks > 1:
            mpiexec = Path(sys.executable).with_name("mpiexec")
            cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *cmd]
        before = load()
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
        result = json.loads(out.read_text())
    case = {"levels": levels, "points": points * points, "ranks": ranks, "wall_s": wall, "load_before": before,
            "layout": result["layout"], "per_rank": sorted(result["ranks"], key=lambda r: r["rank"]),
            "points_per_axis": points}
    if ranks > (os.cpu_count() or 1):
        measure_alone(case)
    return case


def setup_row(case: dict, one: dict, constant: dict) -> dict:
    """Measured vs predicted per rank: share of the pairs x the one-process figure + C_R."""
    total = sum(r["pairs"] for r in case["per_rank"])
    c_s = max(r["cpu_s"] for r in constant["per_rank"])
    c_mb = max(r["peak_mb"] for r in constant["per_rank"])
    f_s, f_mb = one["per_rank"][0]["cpu_s"], one["per_rank"][0]["peak_mb"]
    for r in case["per_rank"]:
        share = r["pairs"] / total
        r["share"] = share
        r["predicted_s"] = share * f_s + c_s
        r["predicted_mb"] = share * f_mb + c_mb
        r["ratio_s"] = r["cpu_s"] / r["predicted_s"]
        r["ratio_mb"] = r["peak_mb"] / r["predicted_mb"]
    worst_s = max(case["per_rank"], key=lambda r: r["cpu_s"])
    worst_mb = max(case["per_rank"], key=lambda r: r["peak_mb"])
    return {
        "kind": "setup", **{k: case[k] for k in ("levels", "points", "ranks")},
        "setup_s": worst_s["cpu_s"], "peak_mb": worst_mb["peak_mb"],
        "predicted_s": worst_s["predicted_s"], "predicted_mb": worst_mb["predicted_mb"],
        "max_ratio_s": max(r["ratio_s"] for r in case["per_rank"]),
        "max_ratio_mb": max(r["ratio_mb"] for r in case["per_rank"]),
        "alone_s": worst_s.get("alone_cpu_s"),
        "alone_ratio_s": worst_s["alone_cpu_s"] / worst_s["predicted_s"] if "alone_cpu_s" in worst_s else None,
        "constant_s": c_s, "constant_mb": c_mb, "one_process_s": f_s, "one_process_mb": f_mb,
        "total_pairs": total, "wall_s": case["wall_s"], "load_before": case["load_before"], "layout": case["layout"],
        "per_rank": case["per_rank"],
    }


# ---------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="set-up at L = 5, 6 on 1 and 4 ranks (about 5 min here)")
    p.add_argument("--check-levels", type=int, nargs="*", default=[5, 6, 7, 8, 9], help="none: no check rows")
    p.add_argument("--check-ranks", type=int, nargs="+", default=None, help="default 1 4 16 64 (256 in full mode)")
    p.add_argument("--setup-levels", type=int, nargs="+", default=None, help="default 5 6 (quick), 6 7 8 (full)")
    p.add_argument("--setup-ranks", type=int, nargs="+", default=None, help="default 4 (quick), 4 16 (full)")
    p.add_argument("--setup-points", type=int, default=None,
                   help="grid points per axis for every set-up case (default 40·2^(L-4)), e.g. to fit memory")
    p.add_argument("--out", default="results/setup_scaling.json")
    args = p.parse_args()
    check_ranks = args.check_ranks or ([1, 4, 16, 64] if args.quick else [1, 4, 16, 64, 256])
    setup_levels = args.setup_levels or ([5, 6] if args.quick else [6, 7, 8])
    setup_ranks = args.setup_ranks or ([4] if args.quick else [4, 16])
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"setup_scaling ({'quick' if args.quick else 'full'}): load average {load():.1f} on {os.cpu_count()} cores",
          flush=True)

    rows = []

    def save() -> None:
        out.write_text(json.dumps(rows, indent=2) + "\n")

    for levels in args.check_levels:
        for ranks in check_ranks:
            rows.append(measure_check(levels, ranks))
            save()

    constants = {r: run_setup(TINY_LEVELS, TINY_POINTS, r) for r in [1, *setup_ranks]}
    for levels in setup_levels:
        points = args.setup_points or points_per_axis(levels)
        one = run_setup(levels, points, 1)
        for ranks in [1, *setup_ranks]:
            case = one if ranks == 1 else run_setup(levels, points, ranks)
            row = setup_row(case, one, constants[ranks])
            rows.append(row)
            save()
            print(f"setup  L={levels} {points}² ranks {ranks:>3}: max CPU {row['setup_s']:6.2f} s (predicted "
                  f"{row['predicted_s']:6.2f}, worst ratio {row['max_ratio_s']:.2f}), max peak {row['peak_mb']:7.1f} MB "
                  f"(predicted {row['predicted_mb']:7.1f}, worst ratio {row['max_ratio_mb']:.2f}); "
                  f"C = {row['constant_s']:.2f} s, {row['constant_mb']:.0f} MB; wall {row['wall_s']:.0f} s "
                  f"(load {row['load_before']:.1f})", flush=True)
    print(f"wrote {out} ({len(rows)} rows) in {time.perf_counter() - started:.0f} s")
    print_tables(rows)


def print_tables(rows: list[dict]) -> None:
    checks = [r for r in rows if r["kind"] == "check"]
    if checks:
        ranks = sorted({r["ranks"] for r in checks})
        print("\n`ddpinn check` wall s / peak MB (a fresh process, imports included)\n")
        print("| L | points | pairs | " + " | ".join(f"{r} ranks" for r in ranks) + " |")
        print("|---|---|---|" + "---|" * len(ranks))
        for levels in sorted({r["levels"] for r in checks}):
            sel = {r["ranks"]: r for r in checks if r["levels"] == levels}
            first = next(iter(sel.values()))
            cells = [f"{sel[k]['setup_s']:.1f} s / {sel[k]['peak_mb']:.0f} MB" if k in sel else "" for k in ranks]
            print(f"| {levels} | {first['points']:,} | {first['total_pairs']:,} | " + " | ".join(cells) + " |")
    setups = [r for r in rows if r["kind"] == "setup"]
    if setups:
        print("\nPer-rank set-up up to the first step (largest rank): CPU s and peak MB over the imports, "
              "measured vs share × one process + C_R\n")
        print("| L | points | ranks | CPU s | predicted | worst ratio | batch alone: CPU s, ratio | peak MB | predicted | "
              "worst ratio | C_R |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in setups:
            alone = f"{r['alone_s']:.2f}, {r['alone_ratio_s']:.2f}" if r["alone_s"] is not None else ""
            print(f"| {r['levels']} | {r['points']:,} | {r['ranks']} | {r['setup_s']:.2f} | {r['predicted_s']:.2f} | "
                  f"{r['max_ratio_s']:.2f} | {alone} | {r['peak_mb']:.0f} | {r['predicted_mb']:.0f} | "
                  f"{r['max_ratio_mb']:.2f} | {r['constant_s']:.2f} s, {r['constant_mb']:.0f} MB |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-check":
        child_check(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--rank-alone":
        rank_alone(*(int(a) for a in sys.argv[2:6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--rank-setup":
        rank_setup(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
