"""Per-rank profile of the training step: compute, halo exchange, all-reduce, optimiser, idle,
and the bytes each rank sends per step (by partitioned level) next to the analytic halo volume.

Run it like training, under any launcher:

    python benchmarks/step_profile.py configs/poisson2d_L5.yaml --steps 50
    torchrun --standalone --nproc_per_node=2 benchmarks/step_profile.py configs/poisson2d_L5.yaml --steps 50

Rank 0 prints a table and writes ``--json`` (default results/step_profile.json), with the date,
the machine, torch's version and the machine-speed probe (``ddpinn.perf.machine_probe_ms``, timed
by rank 0 after the steps; ``step_ms_per_probe`` compares across days). The step runs eager
unless ``--set train.compile=on``. Times are medians over the measured steps. "idle" is the time a rank would wait for the slowest rank's
local compute (max over ranks of compute minus its own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ddpinn.build import build_experiment
from ddpinn.cli import _load
from ddpinn.parallel.analysis import rank_traffic
from ddpinn.parallel.stats import InstrumentedComm
from ddpinn.perf import machine, machine_probe_ms
from ddpinn.session import make_layout, open_session
from ddpinn.train.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(config: str, overrides: list[str], steps: int, warmup: int) -> dict | None:
    cfg, base = _load(config, overrides)
    exp = build_experiment(cfg, base)
    with open_session(cfg) as session:
        raw_comm, device = session.comm, session.device
        comm = InstrumentedComm(raw_comm)
        layout = make_layout(exp, comm.world_size)
        t_setup = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(exp, comm=comm, layout=layout, device=device, run_dir=Path(tmp), quiet=True)
            trainer.points.start(0, None)
            batch = trainer.points.batch
            n_terms, adam = len(trainer.objective.names), trainer.phases.adam.optimizer
            setup_seconds = time.perf_counter() - t_setup
            phases: dict[str, list[float]] = {k: [] for k in ("forward_backward", "exchange", "all_reduce", "optimizer", "step")}
            for i in range(warmup + steps):
                if i == warmup:
                    comm.stats.reset()
                exchange_before = comm.stats.seconds.get("exchange", 0.0)
                sync(device)
                t0 = time.perf_counter()
                adam.zero_grad(set_to_none=True)
                local = trainer.engine.local(batch, trainer.weighting.weights())[:n_terms]
                local.sum().backward()
                sync(device)
                t1 = time.perf_counter()
                trainer.sync.reduce(local.detach())
                sync(device)
                t2 = time.perf_counter()
                adam.step()
                sync(device)
                t3 = time.perf_counter()
                if i >= warmup:
                    phases["forward_backward"].append(t1 - t0)
                    phases["exchange"].append(comm.stats.seconds.get("exchange", 0.0) - exchange_before)
                    phases["all_reduce"].append(t2 - t1)
                    phases["optimizer"].append(t3 - t2)
                    phases["step"].append(t3 - t0)
            med = {k: statistics.median(v) for k, v in phases.items()}
            med["compute"] = med["forward_backward"] - med["exchange"]
            traffic = rank_traffic(exp, layout, comm.rank)
            itemsize = torch.empty(0, dtype=exp.dtype).element_size()
            stats = comm.stats.as_dict()
            measured = {
                "exchange_bytes_per_step": stats.get("exchange", {}).get("bytes", 0) / steps,
                "all_reduce_bytes_per_step": stats.get("all_reduce", {}).get("bytes", 0) / steps,
            }
            row = {
                "rank": comm.rank,
                "ms": {k: 1e3 * v for k, v in med.items()},
                "setup_s": setup_seconds,
                "compile_s": trainer.compile_seconds,
                "traffic": traffic.as_dict(),
                "analytic_exchange_bytes_per_step": (traffic.analytic_halo_points + traffic.analytic_requested_points)
                * traffic.values_per_point * itemsize,
                "halo_bytes_by_level": {
                    lvl: n * traffic.values_per_point * itemsize for lvl, n in traffic.halo_points_by_level.items()
                },
                **measured,
                "peak_rss_mb": _peak_rss_mb(),
            }
        rows = comm.allgather_object(row)
        if comm.rank != 0:
            return None
        max_compute = max(r["ms"]["compute"] for r in rows)
        for r in rows:
            r["ms"]["idle"] = max_compute - r["ms"]["compute"]
        probe = machine_probe_ms()
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "torch": torch.__version__,
            "probe_ms": probe,
            "step_ms_per_probe": max(r["ms"]["step"] for r in rows) / probe,
            "config": config,
            "overrides": overrides,
            "world_size": comm.world_size,
            "comm": raw_comm.name,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "layout": layout.describe(),
            "pairs_total": int(sum(r["traffic"]["pairs"] for r in rows)),
            "ranks": rows,
        }


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(result: dict) -> None:
    print(f"{result['config']} on {result['world_size']} rank(s), {result['comm']}, {result['threads']} thread(s)/rank; "
          f"{result['machine']}, probe {result['probe_ms']:.2f} ms, {result['date']}")
    print(f"  {result['layout']}")
    head = f"{'rank':>4} {'step':>8} {'compute':>8} {'exchange':>8} {'allred':>8} {'optim':>8} {'idle':>8}   " \
           f"{'pairs':>8} {'halo':>6} {'sent B/step':>12} {'analytic B':>11} {'diff':>6}"
    print(head + "   (times in ms)")
    for r in result["ranks"]:
        ms, tr = r["ms"], r["traffic"]
        analytic = r["analytic_exchange_bytes_per_step"]
        sent = r["exchange_bytes_per_step"]
        diff = f"{100 * (sent - analytic) / analytic:+5.1f}%" if analytic else "   -"
        print(f"{r['rank']:>4} {ms['step']:8.3f} {ms['compute']:8.3f} {ms['exchange']:8.3f} {ms['all_reduce']:8.3f} "
              f"{ms['optimizer']:8.3f} {ms['idle']:8.3f}   {tr['pairs']:>8} {tr['halo_points']:>6} {sent:>12.0f} "
              f"{analytic:>11.0f} {diff:>6}")
        if r["halo_bytes_by_level"]:
            levels = ", ".join(f"L{k}: {v:.0f} B" for k, v in r["halo_bytes_by_level"].items())
            print(f"       halo bytes by partitioned level (forward): {levels}; all-reduce "
                  f"{r['all_reduce_bytes_per_step']:.0f} B/step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", default="results/step_profile.json")
    args = p.parse_args()
    # Eager unless asked: train.compile=auto would compile in the middle of the measured steps.
    result = profile(args.config, ["train.compile=off", *args.overrides], args.steps, args.warmup)
    if result is None:
        return
    print_table(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
