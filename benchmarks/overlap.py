"""Does overlapping the halo exchange with local compute make a step faster? A measured prototype.

The idea (issue 10, item 7): the rows of a partitioned level whose points include halo points
produce the partial sums that neighbours wait for. Compute those rows first, start the exchange
without waiting, compute every other row (interior rows of the partitioned levels and the
replicated levels) while the messages travel, then wait and add what arrived.

This script builds that forward pass from the model's own pieces (``FBPINN.partial_sums`` on two
row subsets of the batch, ``FBPINN.constrain``), checks that it computes the same u, jets and
gradients as the shipped forward, and times both (forward, and forward + backward; the backward
of the prototype exchanges synchronously, like the shipped one). Run under torchrun (gloo: its
messages progress on background threads, the case where overlap can hide anything; MPI point to
point without an asynchronous progress thread only moves inside MPI calls):

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/overlap.py configs/poisson2d_L5.yaml
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=4 benchmarks/overlap.py configs/poisson2d_L5.yaml

Rank 0 appends one row per run to ``--json`` (default results/overlap.json): ranks, median ms of
both variants, the speed-up, the share of pairs in halo rows and the largest difference from the
shipped forward. ``--quick`` measures fewer steps. The prototype stays here, not in the model,
unless it pays (see README, "Overlapping the exchange with compute").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ddpinn.build import build_experiment
from ddpinn.cli import _load
from ddpinn.geometry.coverage import LevelCoverage
from ddpinn.model.batch import EvaluationBatch
from ddpinn.perf import machine
from ddpinn.session import make_layout, open_session
from ddpinn.train.trainer import Trainer


def _rows(cov: LevelCoverage, keep: torch.Tensor) -> LevelCoverage:
    """The coverage restricted to the rows ``keep`` ([S] bool)."""
    rows = torch.arange(keep.numel())[keep] if cov.rows is None else cov.rows[keep]
    point_index = cov.point_index[keep]
    return dataclasses.replace(
        cov, subdomain_ids=cov.subdomain_ids[keep], rows=rows, point_index=point_index, x_norm=cov.x_norm[keep],
        inv_half_width=cov.inv_half_width[keep], window_product=cov.window_product[keep],
        n_pairs=int((point_index < cov.n_points).sum()),
    )


def split_batch(batch: EvaluationBatch, partitioned: list[bool]) -> tuple[EvaluationBatch, EvaluationBatch, float]:
    """(halo part, the rest, share of pairs in the halo part): rows of partitioned levels that touch
    a halo point go first; all other rows, and the replicated levels, after."""
    n_own = batch.n_own
    first, rest, pairs_first = [], [], 0
    for cov, split in zip(batch.levels, partitioned):
        touches = ((cov.point_index >= n_own) & (cov.point_index < cov.n_points)).any(1)
        if not split:
            touches = torch.zeros_like(touches)
        first.append(_rows(cov, touches))
        rest.append(_rows(cov, ~touches))
        pairs_first += first[-1].n_pairs
    return (dataclasses.replace(batch, levels=tuple(first)), dataclasses.replace(batch, levels=tuple(rest)),
            pairs_first / max(batch.n_pairs, 1))


class _Arrived(torch.autograd.Function):
    """The values received from neighbours, attached to the graph of the sent partial sums: the
    backward sends the gradients at the owned rows back and scatters those it receives into the
    halo rows (the adjoint of the exchange)."""

    @staticmethod
    def forward(ctx, partial, received, plan):
        ctx.plan, ctx.shape = plan, partial.shape
        return received.clone()

    @staticmethod
    def backward(ctx, grad):
        plan = ctx.plan
        grads = {q: grad.new_empty((int(r.numel()), *ctx.shape[1:])) for q, r in plan.halo_rows.items()}
        sends, offset = {}, 0
        for q in sorted(plan.owned_rows):
            n = int(plan.owned_rows[q].numel())
            sends[q] = grad[offset:offset + n].contiguous()
            offset += n
        _wait(_start(sends, grads))
        out = grad.new_zeros(ctx.shape)
        for q, rows in plan.halo_rows.items():
            if rows.numel():
                out.index_add_(0, rows, grads[q])
        return out, None, None


def _start(sends: dict, receives: dict) -> list:
    ops = [dist.P2POp(dist.irecv, buf, q) for q, buf in sorted(receives.items()) if buf.numel()]
    ops += [dist.P2POp(dist.isend, t, q) for q, t in sorted(sends.items()) if t.numel()]
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(works: list) -> None:
    for w in works:
        w.wait()


def overlapped_forward(model, batch: EvaluationBatch, first: EvaluationBatch, rest: EvaluationBatch) -> torch.Tensor:
    plan = batch.exchange
    partial_first = model.partial_sums(first)
    sends = {q: partial_first[rows].detach().contiguous() for q, rows in plan.halo_rows.items()}
    shape = partial_first.shape[1:]
    received = {q: partial_first.new_empty((int(r.numel()), *shape)) for q, r in plan.owned_rows.items()}
    works = _start(sends, received)
    partial_rest = model.partial_sums(rest)  # while the messages travel
    _wait(works)
    totals = partial_first[: batch.n_own] + partial_rest[: batch.n_own]
    order = sorted(plan.owned_rows)
    if order:
        arrived = _Arrived.apply(partial_first, torch.cat([received[q] for q in order]), plan)
        totals = totals.index_add(0, torch.cat([plan.owned_rows[q] for q in order]), arrived)
    return model.constrain(totals, batch)


def _timed(variants: dict, steps: int, warmup: int) -> dict[str, float]:
    """Median ms of each variant, run in turns (one step of each per round), so that a machine
    whose load drifts slows every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(warmup + steps):
        for name, fn in variants.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def measure(config: str, overrides: list[str], steps: int, warmup: int) -> dict | None:
    cfg, base = _load(config, ["train.compile=off", "parallel.comm=torch", *overrides])
    exp = build_experiment(cfg, base)
    with open_session(cfg) as session:
        comm = session.comm
        if comm.world_size == 1:
            raise SystemExit("overlap.py compares ways of exchanging between ranks: run it on 2 or more ranks")
        layout = make_layout(exp, comm.world_size)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(exp, comm=comm, layout=layout, device=session.device, run_dir=Path(tmp), quiet=True)
            trainer.points.start(0, None)
            batch, model = trainer.points.batch, trainer.model
            first, rest, share = split_batch(batch, [layout.is_partitioned(l) for l in range(exp.decomposition.n_levels)])
            params = [p for p in model.parameters() if p.requires_grad]

            def run(forward, backward: bool):
                model.zero_grad(set_to_none=True)
                u = forward()
                if backward:
                    (u * u).sum().backward()
                return u

            shipped = lambda: model(batch)
            overlapped = lambda: overlapped_forward(model, batch, first, rest)
            u_ref = run(shipped, True).detach()
            g_ref = [p.grad.clone() for p in params]
            u_new = run(overlapped, True).detach()
            scale = float(u_ref.abs().max())
            max_diff = max(float((u_ref - u_new).abs().max()) / scale,
                           max(float((a - p.grad).abs().max() / a.abs().max().clamp_min(1e-30)) for a, p in zip(g_ref, params)))
            row = {"rank": comm.rank, "halo_pair_share": share, "max_rel_diff": max_diff}
            with torch.no_grad():
                forward = _timed({"shipped": shipped, "overlapped": overlapped}, steps, warmup)
            step = _timed({"shipped": lambda: run(shipped, True), "overlapped": lambda: run(overlapped, True)},
                          steps, warmup)
            row.update({f"{k}_forward_ms": v for k, v in forward.items()})
            row.update({f"{k}_step_ms": v for k, v in step.items()})
        rows = comm.allgather_object(row)
        if comm.rank != 0:
            return None
        slowest = {k: max(r[k] for r in rows) for k in rows[0] if k.endswith("_ms")}
        return {
            "config": config, "overrides": overrides, "ranks": comm.world_size, "comm": comm.name,
            "threads": torch.get_num_threads(), "machine": machine(), "layout": layout.describe(),
            **{k: round(v, 3) for k, v in slowest.items()},
            "forward_speedup": slowest["shipped_forward_ms"] / slowest["overlapped_forward_ms"],
            "step_speedup": slowest["shipped_step_ms"] / slowest["overlapped_step_ms"],
            "halo_pair_share": max(r["halo_pair_share"] for r in rows),
            "max_rel_diff": max(r["max_rel_diff"] for r in rows),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="30 measured steps")
    p.add_argument("--json", default="results/overlap.json")
    args = p.parse_args()
    result = measure(args.config, args.overrides, 30 if args.quick else args.steps, args.warmup)
    if result is None:
        return
    print(f"{result['config']} on {result['ranks']} ranks ({result['comm']}, {result['threads']} thread(s)/rank): "
          f"forward {result['shipped_forward_ms']:.2f} -> {result['overlapped_forward_ms']:.2f} ms "
          f"(x{result['forward_speedup']:.3f}), forward+backward {result['shipped_step_ms']:.2f} -> "
          f"{result['overlapped_step_ms']:.2f} ms (x{result['step_speedup']:.3f}); "
          f"{100 * result['halo_pair_share']:.1f}% of pairs in halo rows; max rel diff {result['max_rel_diff']:.1e}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(rows + [result], indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
