"""The memory model (ddpinn/parallel/memory.py) against measured peaks of real training runs.

    python benchmarks/memory_model.py --quick    # P4 L = 5, 6, 7 eager, L = 5 compiled, L = 6 on 2 ranks
    python benchmarks/memory_model.py            # also L = 6, 7 compiled and L = 5, 7 on 2 ranks
    python benchmarks/memory_model.py --probe configs/poisson2d_L6.yaml [--set k=v ...]

Each case trains ``configs/poisson2d_L<L>.yaml`` for 5 Adam steps (float32, one thread per rank,
plots off; the last step evaluates the test grid) in a fresh process (``mpiexec -n 2`` for two
ranks) and reads ``summary.json``: every rank's measured peak (``ru_maxrss``: the whole process,
interpreter included) beside the model's prediction for that rank's batch. A row per case,
``{levels, ranks, compiled, measured_mb, predicted_mb, ratio, pairs, ...}`` (the rank with the
largest measured peak; ratio = predicted / measured), goes to ``results/memory_model.json``
(``--quick``; ``results/memory_model_full.json`` without it) and a bar chart to
``results/memory_model.png``. The exit status is 1 when a ratio leaves [0.8, 1.2].

``--probe`` measures one config in this process, phase by phase (resident set before the batch,
after building it, after 4 steps), and prints the structural per-slot counts beside the measured
step memory: the calibration of the model's allocator factors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
TOLERANCE = 0.2

QUICK_CASES = [(5, 1, False), (6, 1, False), (7, 1, False), (5, 1, True), (6, 2, False)]
FULL_CASES = QUICK_CASES + [(6, 1, True), (7, 1, True), (5, 2, False), (7, 2, False)]


def train_case(levels: int, ranks: int, compiled: bool, out: Path) -> dict:
    """Train one case in a fresh process and return its row."""
    name = f"L{levels}_r{ranks}_{'compiled' if compiled else 'eager'}"
    sets = [
        "train.steps=5", "train.log_every=5", "train.eval_every=0", f"train.compile={'on' if compiled else 'off'}",
        "run.threads=1", "run.plots=false", f"run.output_dir={out}", f"run.name={name}",
    ]
    ddpinn = [sys.executable, "-m", "ddpinn.cli", "train", f"configs/poisson2d_L{levels}.yaml",
              *[a for s in sets for a in ("--set", s)], "--overwrite", "--quiet"]
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = ddpinn if ranks == 1 else [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *ddpinn]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = json.loads((out / name / "summary.json").read_text())
    measured, predicted = summary["peak_memory_mb_per_rank"], summary["predicted_memory_mb_per_rank"]
    worst = max(range(ranks), key=lambda r: measured[r])
    return {
        "levels": levels, "ranks": ranks, "compiled": summary["step_mode"] == "compiled",
        "measured_mb": round(measured[worst], 1), "predicted_mb": round(predicted[worst], 1),
        "ratio": round(predicted[worst] / measured[worst], 3),
        "measured_mb_per_rank": measured, "predicted_mb_per_rank": predicted,
        "measure": summary["memory_measure"], "step_mode": summary["step_mode"], "wall_s": round(time.perf_counter() - t0, 1),
    }


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, bytes (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def probe(config: str, sets: list[str], steps: int = 4) -> dict:
    """One process: the resident set after building a trainer, after building the training batch
    and after ``steps`` training steps, with the model's parts for the same batch (bytes → MiB)."""
    import torch

    from ddpinn.build import build_experiment
    from ddpinn.config import load_config
    from ddpinn.parallel.memory import batch_counts, estimate_rank_memory, saved_values_per_slot
    from ddpinn.session import make_layout, open_session
    from ddpinn.train.trainer import Trainer

    cfg = load_config(config, [*sets, "run.plots=false", "run.threads=1", "run.output_dir=/tmp/ddpinn_memory_probe",
                               "run.name=probe"])
    exp = build_experiment(cfg)
    with open_session(cfg) as session:
        trainer = Trainer(exp, comm=session.comm, layout=make_layout(exp, 1), device=session.device,
                          run_dir=cfg.run_dir, quiet=True)
        built = _status()
        trainer.points.start(0, None)
        batch = trainer.points.batch
        with_batch = _status()
        for step in range(steps):
            trainer.train_step(step, batch)
        stepped = _status()
        compiled = trainer.engine.local.mode == "compiled"
        estimate = estimate_rank_memory(exp, batch_counts(batch, trainer.model), compiled=compiled)
        slots = [c.point_index.numel() for c in batch.levels]
    parts = estimate.by_part
    step_parts = sum(v for k, v in parts.items() if k.startswith(("activations", "step transient", "parameters")))
    return {
        "config": config, "sets": sets, "mode": "compiled" if compiled else "eager", "jets": len(exp.spec),
        "sizes": [list(s) for s in exp.level_sizes], "pairs": batch.n_pairs, "slots": sum(slots),
        "slots_per_pair": sum(slots) / max(batch.n_pairs, 1), "n_eval": batch.n_eval,
        "saved_values_per_slot": [saved_values_per_slot(s, exp.spec) for s in exp.level_sizes],
        "trainer_mb": built["VmHWM"] / MiB,
        "batch_build_mb": (with_batch["VmHWM"] - built["VmHWM"]) / MiB,
        "step_mb": (stepped["VmHWM"] - with_batch["VmRSS"]) / MiB,
        "predicted_step_mb": step_parts / MiB,
        "predicted_build_mb": (parts["batch"] + parts["batch build (host)"]) / MiB,
        "peak_mb": stepped["VmHWM"] / MiB,
        # No test set here: the probe builds none.
        "predicted_peak_mb": (estimate.total_bytes - parts["test set"]) / MiB,
        "measured_step_bytes_per_slot": (stepped["VmHWM"] - with_batch["VmRSS"]) / max(sum(slots), 1),
        "dtype": str(exp.dtype), "torch": torch.__version__,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"L{r['levels']} {r['ranks']}r\n{'compiled' if r['compiled'] else 'eager'}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 3.8))
    ax.bar([i - 0.2 for i in x], [r["measured_mb"] for r in rows], 0.4, label="measured (ru_maxrss)")
    ax.bar([i + 0.2 for i in x], [r["predicted_mb"] for r in rows], 0.4, label="memory model")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['ratio']:.2f}", (i + 0.2, r["predicted_mb"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("peak memory per rank (MiB)")
    ax.set_title("P4, 5 Adam steps: measured peak vs predicted (ratio above the bar)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the quick cases (about 5-10 min on 2 cores)")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--probe", metavar="CONFIG", help="measure one config phase by phase in this process")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override for --probe")
    args = p.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.sets)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    runs = Path("/tmp/ddpinn_memory_model")
    rows = []
    stem = "memory_model" if args.quick else "memory_model_full"
    for levels, ranks, compiled in QUICK_CASES if args.quick else FULL_CASES:
        rows.append(train_case(levels, ranks, compiled, runs))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.out / f"{stem}.png")
    print(f"{'L':>2} {'ranks':>5} {'mode':>8} {'measured MiB':>13} {'predicted MiB':>14} {'ratio':>6}")
    for r in rows:
        print(f"{r['levels']:>2} {r['ranks']:>5} {r['step_mode']:>8} {r['measured_mb']:>13.0f} {r['predicted_mb']:>14.0f} "
              f"{r['ratio']:>6.2f}")
    sys.exit(0 if all(abs(r["ratio"] - 1) <= TOLERANCE for r in rows) else 1)


if __name__ == "__main__":
    main()
