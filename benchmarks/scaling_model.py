"""Scaling model: extrapolate measured per-pair compute and plan-derived message volumes to
8-1024 GPUs for stated network parameters.

    python benchmarks/scaling_model.py                               # P4 L=5..7, 1..1024 ranks
    python benchmarks/scaling_model.py --us-per-pair 0.01 --latency-us 5 --bandwidth-gbs 25
    python benchmarks/scaling_model.py --measured results/step_profile.json   # take c from a profile

For each rank count the *actual* partition is built (process grid, cost-model level policies,
owners), each rank's points are sampled and its halo found exactly as the exchange plan does
(no processes are started), giving per rank: (point, subdomain) pairs, halo values sent, the
replicated parameters all-reduced and the number of neighbours. Then

    t_step = c · max_r pairs_r
           + 2 · (α · neighbours + bytes_exchanged / β)          forward and backward exchange
           + 2 ⌈log2 R⌉ α + 2 (R-1)/R · bytes_allreduce / β       Rabenseifner all-reduce
           + t_optimizer (measured, per parameter)

c is the measured single-process cost per pair and step (this CPU by default; pass a GPU value
with --us-per-pair). Weak scaling grows the L=5,6,7 family with the rank count at fixed points
per rank; the table also lists the bytes per rank and step for each case so that it can be read
against the overlap surface: they follow the cut length, not the point count.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.parallel.analysis import rank_traffic
from ddpinn.parallel.layout import LayoutError, process_grid
from ddpinn.parallel.policy import plan_layout


def experiment(levels: int, points: int):
    freqs = [2.0 * 2**i for i in range(levels - 1)]
    data = {
        "problem": {"name": "poisson2d", "params": {"frequencies": freqs}},
        "decomposition": {"levels": levels},
        "sampling": {"method": "grid", "n": [points, points]},
    }
    return build_experiment(load_config(data=data))


def representative_ranks(grid: tuple[int, ...]) -> list[int]:
    """All ranks for small grids; else corner, edge and interior blocks (the rest repeat them)."""
    if int(np.prod(grid)) <= 16:
        return list(range(int(np.prod(grid))))
    picks = [sorted({0, 1, g // 2, g - 1}) for g in grid]
    return sorted({int(np.ravel_multi_index(idx, grid)) for idx in np.array(np.meshgrid(*picks)).reshape(len(grid), -1).T})


def model_case(levels: int, points: int, ranks: int, args) -> dict | None:
    exp = experiment(levels, points)
    try:
        process_grid(ranks, exp.cells)
        layout = plan_layout(exp, ranks)
    except LayoutError:
        return None
    traffic = [rank_traffic(exp, layout, r) for r in representative_ranks(layout.grid)]
    itemsize = 4
    pairs = max(t.pairs for t in traffic)
    exchange_bytes = max(t.values_sent_per_step for t in traffic) * itemsize
    neighbours = max(t.neighbours for t in traffic)
    allreduce_bytes = traffic[0].replicated_parameters * itemsize + 8 * 4  # + loss terms
    alpha, beta = args.latency_us * 1e-6, args.bandwidth_gbs * 1e9
    t_compute = pairs * args.us_per_pair * 1e-6
    t_exchange = 2 * (alpha * neighbours) + exchange_bytes / beta if ranks > 1 else 0.0
    t_allreduce = (2 * math.ceil(math.log2(ranks)) * alpha + 2 * (ranks - 1) / ranks * allreduce_bytes / beta) if ranks > 1 else 0.0
    return {
        "levels": levels, "points": points, "ranks": ranks, "grid": layout.grid,
        "policies": "".join(p.value[0].upper() for p in layout.policies),
        "points_per_rank": max(t.own_points for t in traffic), "pairs_per_rank": pairs,
        "exchange_bytes_per_rank": exchange_bytes, "allreduce_bytes": allreduce_bytes, "neighbours": neighbours,
        "t_compute_ms": 1e3 * t_compute, "t_exchange_ms": 1e3 * t_exchange, "t_allreduce_ms": 1e3 * t_allreduce,
        "t_step_ms": 1e3 * (t_compute + t_exchange + t_allreduce),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--us-per-pair", type=float, default=None,
                   help="compute cost per (point, subdomain) pair and step in µs (default: from --measured)")
    p.add_argument("--measured", default="results/step_profile_1rank.json",
                   help="a 1-rank step_profile.py JSON to take the per-pair cost from")
    p.add_argument("--latency-us", type=float, default=5.0, help="α, per message (default: InfiniBand-class 5 µs)")
    p.add_argument("--bandwidth-gbs", type=float, default=25.0, help="β per link in GB/s (default 25: 200 Gb/s)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64, 256, 1024])
    p.add_argument("--out", default="results/scaling_model.json")
    args = p.parse_args()
    if args.us_per_pair is None:
        path = Path(args.measured)
        if not path.exists():
            raise SystemExit(f"no {path}: run `python benchmarks/step_profile.py configs/poisson2d_L5.yaml --json {path}` "
                             f"first, or pass --us-per-pair")
        prof = json.loads(path.read_text())
        rank0 = prof["ranks"][0]
        args.us_per_pair = 1e3 * (rank0["ms"]["compute"] + rank0["ms"]["optimizer"]) / prof["pairs_total"]
        print(f"per-pair cost from {path}: {args.us_per_pair:.4f} µs (compute + optimiser, {prof['threads']} thread(s))")
    print(f"network: α = {args.latency_us} µs, β = {args.bandwidth_gbs} GB/s; c = {args.us_per_pair:.4f} µs/pair\n")

    rows = []
    # Weak scaling: L=5 on the base points per rank, finer levels as the rank count grows 4x.
    print("Bytes per rank and step (float32) for the P4 family at fixed size, by rank count:")
    print(f"{'L':>2} {'points':>7} {'ranks':>5} {'policies':>9} {'pts/rank':>9} {'pairs/rank':>10} {'halo B/rank':>11} "
          f"{'allred B':>9} {'nbrs':>4} {'t_comp':>8} {'t_exch':>7} {'t_allr':>7} {'t_step':>8} {'eff':>6}")
    for levels, points in ((5, 80), (6, 160), (7, 320)):
        base = None
        for ranks in args.ranks:
            row = model_case(levels, points, ranks, args)
            if row is None:
                continue
            base = base or row["t_step_ms"] * row["ranks"]
            row["strong_efficiency"] = base / (row["ranks"] * row["t_step_ms"])
            rows.append(row)
            print(f"{levels:>2} {points:>5}^2 {ranks:>5} {row['policies']:>9} {row['points_per_rank']:>9} "
                  f"{row['pairs_per_rank']:>10} {row['exchange_bytes_per_rank']:>11.0f} {row['allreduce_bytes']:>9.0f} "
                  f"{row['neighbours']:>4} {row['t_compute_ms']:8.3f} {row['t_exchange_ms']:7.3f} "
                  f"{row['t_allreduce_ms']:7.3f} {row['t_step_ms']:8.3f} {100 * row['strong_efficiency']:5.1f}%")
        print()
    print("Weak scaling: the P4 family grows one level (4x points) per 4x ranks, 6400 points per rank:")
    print(f"{'L':>2} {'points':>8} {'ranks':>5} {'policies':>10} {'pairs/rank':>10} {'halo B/rank':>11} {'allred B':>9} "
          f"{'t_comp':>8} {'t_comm':>7} {'t_step':>8} {'parallel eff':>12}")
    for levels, points, ranks in ((5, 80, 1), (6, 160, 4), (7, 320, 16), (8, 640, 64), (9, 1280, 256), (10, 2560, 1024)):
        if ranks not in args.ranks:
            continue
        row = model_case(levels, points, ranks, args)
        if row is None:
            continue
        row["kind"] = "weak"
        # Per-rank work grows with the extra level itself; the parallel efficiency isolates communication.
        row["parallel_efficiency"] = row["t_compute_ms"] / row["t_step_ms"]
        rows.append(row)
        print(f"{levels:>2} {points:>6}^2 {ranks:>5} {row['policies']:>10} {row['pairs_per_rank']:>10} "
              f"{row['exchange_bytes_per_rank']:>11.0f} {row['allreduce_bytes']:>9.0f} {row['t_compute_ms']:8.3f} "
              f"{row['t_exchange_ms'] + row['t_allreduce_ms']:7.3f} {row['t_step_ms']:8.3f} "
              f"{100 * row['parallel_efficiency']:11.1f}%")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"us_per_pair": args.us_per_pair, "latency_us": args.latency_us,
                               "bandwidth_gbs": args.bandwidth_gbs, "rows": rows}, indent=2, default=list) + "\n")
    print(f"wrote {out} (eff = strong-scaling efficiency at fixed problem size)")


if __name__ == "__main__":
    main()
