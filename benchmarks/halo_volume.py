"""Measured communication volume per rank and step for P4 L=5..7 on 1, 2, 4, 8 ranks.

    python benchmarks/halo_volume.py                         # mpiexec, ~5 min on 2 cores
    python benchmarks/halo_volume.py --configs configs/poisson2d_L5.yaml --ranks 1 2 4

Runs ``step_profile.py`` (a few eager steps; 4 and 8 ranks oversubscribe this 2-core machine,
which changes times but not bytes) and collects, per case, the bytes each rank sent in the halo
exchange (forward partial sums + backward gradients, counted by the instrumented communicator),
the analytic volume of the box model, and the all-reduce bytes. Going from L to L+1 multiplies
the points by 4; a volume that follows the overlap surface (the cut length) only doubles.
Writes ``OUT/halo_volume.json`` and ``OUT/halo_volume.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def measure(config: str, ranks: int, out: Path) -> dict:
    target = out / f"{Path(config).stem}_r{ranks}.json"
    cmd = [sys.executable, str(HERE / "step_profile.py"), config, "--steps", "2", "--warmup", "1",
           "--set", "train.compile=off", "--json", str(target)]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *cmd]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return json.loads(target.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=[f"configs/poisson2d_L{l}.yaml" for l in (5, 6, 7)])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--out", default="results/halo_volume")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for config in args.configs:
        for ranks in args.ranks:
            result = measure(config, ranks, out)
            per_rank = result["ranks"]
            sent = [r["exchange_bytes_per_step"] for r in per_rank]
            analytic = [r["analytic_exchange_bytes_per_step"] for r in per_rank]
            rows.append({
                "config": Path(config).stem, "ranks": ranks,
                "points": sum(r["traffic"]["own_points"] for r in per_rank),
                "max_sent_bytes": max(sent), "mean_sent_bytes": sum(sent) / len(sent),
                "max_analytic_bytes": max(analytic),
                "halo_points_max": max(r["traffic"]["halo_points"] for r in per_rank),
                "all_reduce_bytes": max(r["all_reduce_bytes_per_step"] for r in per_rank),
                "layout": result["layout"],
            })

    print(f"\n{'case':14} {'ranks':>5} {'points':>8} {'halo pts':>8} {'sent B/rank':>12} {'analytic B':>11} "
          f"{'all-reduce B':>12}")
    for r in rows:
        print(f"{r['config']:14} {r['ranks']:>5} {r['points']:>8} {r['halo_points_max']:>8} {r['max_sent_bytes']:>12.0f} "
              f"{r['max_analytic_bytes']:>11.0f} {r['all_reduce_bytes']:>12.0f}")
    print("\nfrom one L to the next (same ranks): points x4; halo bytes per rank x:")
    for ranks in args.ranks:
        seq = [r for r in rows if r["ranks"] == ranks]
        ratios = [b["max_sent_bytes"] / a["max_sent_bytes"] for a, b in zip(seq, seq[1:]) if a["max_sent_bytes"]]
        if ratios:
            print(f"  {ranks} ranks: " + ", ".join(f"{x:.2f}" for x in ratios))
    (out / "halo_volume.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'halo_volume.json'}")
    plot(rows, out / "halo_volume.png")


def plot(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for ranks in sorted({r["ranks"] for r in rows if r["ranks"] > 1}):
        sel = [r for r in rows if r["ranks"] == ranks]
        ax.loglog([r["points"] for r in sel], [r["max_sent_bytes"] for r in sel], "o-", label=f"{ranks} ranks")
    pts = sorted({r["points"] for r in rows})
    if len(pts) > 1:
        first = max(r["max_sent_bytes"] for r in rows if r["points"] == pts[0])
        ax.loglog(pts, [first * (p / pts[0]) ** 0.5 for p in pts], "k--", lw=0.8, label="∝ √points (surface)")
        ax.loglog(pts, [first * p / pts[0] for p in pts], "k:", lw=0.8, label="∝ points")
    ax.set_xlabel("collocation points (L = 5, 6, 7)")
    ax.set_ylabel("halo bytes sent per rank and step (max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
