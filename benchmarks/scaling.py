"""Weak- and strong-scaling harness: runs ``step_profile.py`` on 1, 2, ... ranks and writes JSON
and a plot.

    python benchmarks/scaling.py                       # P4 L=5, ranks 1 and 2 (this 2-core CPU)
    python benchmarks/scaling.py --ranks 1 2 4 8       # on a bigger machine (or 4 for correctness only here)
    python benchmarks/scaling.py --launcher mpiexec        # messages through MPI (parallel.comm: auto)

Every rank uses one thread (``--threads``), so R ranks use R cores: weak scaling keeps the
collocation points per rank fixed (the grid grows with the process grid: 80·g_x × 80·g_y for
L=5), strong scaling keeps the 80×80 problem fixed. Efficiency is t(1 rank) / t(R ranks) for weak
and t(1) / (R · t(R)) for strong scaling, on the median step time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ddpinn.build import build_experiment
from ddpinn.cli import _load
from ddpinn.parallel.layout import process_grid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_profile(config: str, ranks: int, overrides: list[str], args, tag: str) -> dict:
    out = Path(args.out) / f"{tag}_r{ranks}.json"
    cmd_tail = [str(HERE / "step_profile.py"), config, "--steps", str(args.steps), "--json", str(out)]
    for o in overrides:
        cmd_tail += ["--set", o]
    if ranks == 1:
        cmd = [sys.executable, *cmd_tail]
    elif args.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *cmd_tail]
    else:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), sys.executable, *cmd_tail]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL if args.quiet else None)
    return json.loads(out.read_text())


def step_ms(result: dict) -> float:
    return max(r["ms"]["step"] for r in result["ranks"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/poisson2d_L5.yaml")
    p.add_argument("--points-per-axis", type=int, default=80, help="grid points per axis per process-grid block")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--launcher", choices=["torchrun", "mpiexec"], default="torchrun")
    p.add_argument("--set", dest="overrides", action="append", default=["train.compile=off"], metavar="KEY=VALUE")
    p.add_argument("--out", default="results/scaling")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    cfg, _ = _load(args.config, args.overrides)
    exp = build_experiment(cfg)
    n = args.points_per_axis
    runs = {"weak": {}, "strong": {}}
    for ranks in args.ranks:
        grid = process_grid(ranks, exp.cells)
        weak_points = [n * g for g in grid]
        runs["weak"][ranks] = run_profile(
            args.config, ranks, [*args.overrides, f"sampling.n={weak_points}"], args, "weak"
        )
        runs["strong"][ranks] = run_profile(args.config, ranks, [*args.overrides, f"sampling.n={[n] * len(grid)}"], args, "strong")

    base = min(args.ranks)
    rows = []
    for kind in ("weak", "strong"):
        t_base = step_ms(runs[kind][base])
        for ranks, result in runs[kind].items():
            t = step_ms(result)
            eff = t_base / t if kind == "weak" else t_base * base / (ranks * t)
            worst = max(result["ranks"], key=lambda r: r["ms"]["step"])
            rows.append({
                "kind": kind, "ranks": ranks, "step_ms": t, "efficiency": eff, "pairs_total": result["pairs_total"],
                "compute_ms": worst["ms"]["compute"], "exchange_ms": worst["ms"]["exchange"],
                "all_reduce_ms": worst["ms"]["all_reduce"], "optimizer_ms": worst["ms"]["optimizer"],
                "idle_ms": worst["ms"]["idle"], "exchange_bytes": worst["exchange_bytes_per_step"],
                "layout": result["layout"],
            })
    print(f"\n{args.config}, {args.threads} thread(s) per rank, {args.launcher}")
    print(f"{'kind':6} {'ranks':>5} {'step ms':>8} {'eff':>6} {'compute':>8} {'exch':>7} {'allred':>7} {'optim':>6} {'idle':>6} {'halo B':>8}")
    for r in rows:
        print(f"{r['kind']:6} {r['ranks']:>5} {r['step_ms']:8.2f} {100 * r['efficiency']:5.1f}% {r['compute_ms']:8.2f} "
              f"{r['exchange_ms']:7.2f} {r['all_reduce_ms']:7.2f} {r['optimizer_ms']:6.2f} {r['idle_ms']:6.2f} "
              f"{r['exchange_bytes']:8.0f}")
    summary = Path(args.out) / "scaling.json"
    summary.write_text(json.dumps({"config": args.config, "threads": args.threads, "rows": rows, "runs": runs}, indent=2) + "\n")
    print(f"wrote {summary}")
    plot(rows, Path(args.out) / "scaling.png")


def plot(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind in zip(axes, ("weak", "strong")):
        sel = [r for r in rows if r["kind"] == kind]
        ranks = [str(r["ranks"]) for r in sel]
        bottom = [0.0] * len(sel)
        for key, label in (("compute_ms", "compute"), ("exchange_ms", "exchange"), ("all_reduce_ms", "all-reduce"),
                           ("optimizer_ms", "optimiser")):
            vals = [r[key] for r in sel]
            ax.bar(ranks, vals, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, vals)]
        for i, r in enumerate(sel):
            ax.text(i, bottom[i], f"{100 * r['efficiency']:.0f}%", ha="center", va="bottom", fontsize=9)
        ax.set_title(f"{kind} scaling (efficiency on top)")
        ax.set_xlabel("ranks")
        ax.set_ylabel("ms per step (slowest rank)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
