"""The CUDA path end to end on a one-GPU machine, in stages, into one JSON.

    python benchmarks/gpu_check.py                        # on a GPU machine: P4 L = 4..8 and all checks
    python benchmarks/gpu_check.py --budget-s 480         # stop starting stages after 8 minutes
    python benchmarks/gpu_check.py --device cpu           # the same stages, small, on the CPU (CI: < 2 min)

Stages, in this order, each in a fresh process with its own time limit (a crash, a hang or an
out-of-memory in one is recorded in the JSON and the next one runs):

``env``
    torch and CUDA versions, the GPU, NCCL's version, the CPU.
``device_vs_cpu``
    P4 L = 3 in float64, a few Adam steps on the device and on the CPU from the same
    initialisation: the loss of every step, the step-0 gradients and the final parameters must
    agree within a relative difference of 1e-9 (float64 with other summation orders in
    cuBLAS/cuDNN and MKL: ~1e-14 expected per operation, a few steps amplify it).
``gloo_2ranks``
    the same case, with levels 2 and 3 partitioned (so the halo exchange runs), on 2 ranks under
    ``torchrun --nproc_per_node=2`` sharing the one device through the gloo backend
    (``parallel.comm: gloo``: NCCL refuses two ranks on one GPU), against 1 rank: losses and
    final parameters within 1e-9.
``speed_L<l>``
    P4 with ``l`` levels (``configs/poisson2d_L<l>.yaml``; L = 8 is L7 with 640² points and
    ω up to 128), one process, float32, eager: ms per Adam step (median of 5 chunks after a
    warm-up), µs per (point, subdomain) pair, peak memory (``torch.cuda.max_memory_allocated``;
    on the CPU the peak resident size) and the set-up time.
``compile_L<l>``
    the same step compiled (``train.compile: on``) with an empty compile cache (a fresh
    ``TORCHINDUCTOR_CACHE_DIR``): compile seconds and compiled ms per step.

Every stage prints one line; ``--out`` (default ``results/gpu_check.json``) is rewritten after
each stage, so an interrupted check keeps what finished. ``--budget-s`` caps the whole check:
a stage starts only with at least ``--min-stage-s`` left and gets at most what is left. The exit
status is 0 when every stage that ran passed.
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
TOLERANCE = 1e-9
"""Largest relative difference (‖a − b‖ / ‖a‖) between float64 runs that must agree."""


def p4_overrides(levels: int) -> tuple[str, list[str]]:
    """Config and overrides of P4 with ``levels`` levels (L = 8: L7's config, 640² points, ω to 128)."""
    if levels <= 7:
        return f"configs/poisson2d_L{levels}.yaml", []
    if levels == 8:
        return "configs/poisson2d_L7.yaml", [
            "decomposition.levels=8", "sampling.n=[640,640]", "problem.params.frequencies=[2,4,8,16,32,64,128]",
        ]
    raise ValueError(f"--levels: P4 is set up here for L = 2..8, got {levels}")


SMALL_CASE = {
    # P4 L = 3, as the multi-rank equivalence tests: levels 2 and 3 partitioned on 2 ranks.
    "problem": {"name": "poisson2d", "params": {"frequencies": [2.0, 4.0]}},
    "decomposition": {"levels": 3},
    "sampling": {"method": "uniform", "n": 300, "test_n": [20, 20]},
    "optimizer": {"lr": 1e-3},
    "parallel": {"level_policy": ["replicated", "partitioned", "partitioned"], "comm": "gloo", "timeout_s": 120},
}


# ------------------------------------------------------------------------------------- workers
def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_speed(levels: int, device_name: str, compiled: bool, steps: int) -> dict:
    """ms per Adam step of P4 with ``levels`` levels on one process."""
    from ddpinn.build import build_experiment, resolve_device
    from ddpinn.config import load_config
    from ddpinn.parallel.comm import LocalComm
    from ddpinn.perf import set_threads
    from ddpinn.session import make_layout
    from ddpinn.train.trainer import Trainer

    t0 = time.perf_counter()
    config, overrides = p4_overrides(levels)
    overrides += [f"run.device={device_name}", f"train.compile={'on' if compiled else 'off'}", "run.plots=false"]
    cfg = load_config(ROOT / config, overrides)
    device = resolve_device(cfg.run.device)
    set_threads(cfg.run.threads, 1)  # as a run does: one core left (an oversubscribed team collapses)
    exp = build_experiment(cfg, ROOT / "configs")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(exp, comm=LocalComm(), layout=make_layout(exp, 1), device=device, run_dir=Path(tmp),
                          quiet=True)
        trainer.points.start(0, None)
        batch = trainer.points.batch
        _sync(device)
        setup_s = time.perf_counter() - t0
        trainer.train_step(0, batch)  # builds lazily; compiles when compiled
        _sync(device)
        warm = max(2, steps // 5)
        for step in range(1, warm + 1):
            trainer.train_step(step, batch)
        _sync(device)
        chunk, times = max(1, steps // 5), []
        for c in range(5):
            start = time.perf_counter()
            for step in range(chunk):
                trainer.train_step(warm + 1 + c * chunk + step, batch)
            _sync(device)  # the steps queue on the device: time them to their end
            times.append((time.perf_counter() - start) / chunk)
        trainer.guard.raise_if_tripped(warm + 5 * chunk, batch)
        ms = 1e3 * statistics.median(times)
        return {
            "levels": levels, "config": config, "overrides": overrides, "mode": trainer.step_mode,
            "ms_per_step": ms, "ms_per_step_min_max": [1e3 * min(times), 1e3 * max(times)], "timed_steps": 5 * chunk,
            "pairs": batch.n_pairs, "points": batch.n_own, "us_per_pair": 1e3 * ms / batch.n_pairs,
            "peak_memory_mb": _peak_memory_mb(device), "setup_s": setup_s, "compile_s": trainer.compile_seconds,
            "subdomains": exp.decomposition.n_subdomains,
        }


def _small_cfg(run_dir: Path, device_name: str, steps: int, **parallel):
    from ddpinn.config import load_config

    data = json.loads(json.dumps(SMALL_CASE))
    data["parallel"].update(parallel)
    data.update(train={"steps": steps, "log_every": 1, "eval_every": steps, "compile": "off", "checkpoint_every": 0},
                run={"dtype": "float64", "device": device_name, "plots": False, "seed": 3, "threads": 1,
                     "output_dir": str(run_dir.parent), "name": run_dir.name})
    return load_config(data=data)


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


def worker_device_vs_cpu(device_name: str, steps: int) -> dict:
    """A few float64 Adam steps of the small case on the CPU and on ``device_name``."""
    import torch

    from ddpinn.build import build_experiment, resolve_device
    from ddpinn.parallel.comm import LocalComm
    from ddpinn.session import make_layout
    from ddpinn.train.trainer import Trainer

    torch.set_num_threads(1)  # the case is tiny
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(("cpu", device_name)):
            cfg = _small_cfg(Path(tmp) / f"run{i}", name, steps)
            exp = build_experiment(cfg)
            trainer = Trainer(exp, comm=LocalComm(), layout=make_layout(exp, 1), device=resolve_device(name),
                              run_dir=cfg.run_dir, quiet=True)
            trainer.points.start(0, None)
            batch = trainer.points.batch
            losses, grads = [], None
            for step in range(steps):
                terms = trainer.train_step(step, batch)
                losses.append(float(terms.sum()))
                if step == 0:
                    grads = torch.cat([p.grad.detach().reshape(-1).cpu() for p in trainer.sync.params])
            trainer.guard.raise_if_tripped(steps, batch)
            params = torch.cat([p.detach().reshape(-1).cpu() for p in trainer.sync.params])
            runs.append((losses, grads, params))
    (l_cpu, g_cpu, p_cpu), (l_dev, g_dev, p_dev) = runs
    diffs = {"loss": _rel(l_cpu, l_dev), "step0_gradients": _rel(g_cpu, g_dev), "parameters": _rel(p_cpu, p_dev)}
    return {"steps": steps, "dtype": "float64", "tolerance": TOLERANCE, "rel_diff": diffs,
            "passed": all(d <= TOLERANCE for d in diffs.values()), "losses_cpu": l_cpu, "losses_device": l_dev}


def _train_small(run_dir: Path, device_name: str, steps: int, ranks: int, timeout_s: float) -> None:
    cfg_path = run_dir.with_suffix(".json")
    cfg_path.write_text(json.dumps({"run_dir": str(run_dir), "device": device_name, "steps": steps}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    script = [str(Path(__file__).resolve()), "--train-small", str(cfg_path)]
    cmd = [sys.executable, *script] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{ranks} rank(s) failed ({proc.returncode}): {proc.stderr[-2000:]}")


def train_small(spec_path: str) -> None:
    """One rank of the small case through the public entry point (``run_training``)."""
    from ddpinn.session import run_training

    spec = json.loads(Path(spec_path).read_text())
    run_training(_small_cfg(Path(spec["run_dir"]), spec["device"], spec["steps"]), quiet=True)


def worker_gloo_2ranks(device_name: str, steps: int, timeout_s: float) -> dict:
    """2 ranks sharing the device through gloo against 1 rank, float64."""
    from ddpinn.train.checkpoint import ArrayKey, load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for ranks in (1, 2):
            run_dir = Path(tmp) / f"ranks{ranks}"
            t0 = time.perf_counter()
            _train_small(run_dir, device_name, steps, ranks, timeout_s / 2)
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            arrays = load_checkpoint(run_dir / "checkpoint.h5").arrays
            # Parameter values by global subdomain id (rank-count free), not optimiser state.
            params = {k: v for k, v in arrays.items()
                      if not k.startswith(("weighting/", "points/")) and ArrayKey.parse(k).state is None}
            summary = json.loads((run_dir / "summary.json").read_text())
            out[ranks] = ([m["loss"] for m in metrics], params, summary, time.perf_counter() - t0)
    (l1, p1, _, t1), (l2, p2, s2, t2) = out[1], out[2]
    keys = sorted(set(p1) & set(p2))
    param_diff = max((_rel(p1[k], p2[k]) for k in keys), default=float("nan"))
    diffs = {"loss": _rel(l1, l2), "parameters_max": param_diff}
    return {"steps": steps, "dtype": "float64", "comm": "gloo", "tolerance": TOLERANCE, "rel_diff": diffs,
            "compared_arrays": len(keys), "layout_2ranks": s2.get("layout"), "seconds": {"1": t1, "2": t2},
            "passed": bool(keys) and set(p1) == set(p2) and all(d <= TOLERANCE for d in diffs.values())}


def environment() -> dict:
    import torch

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
        "torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
    }
    try:
        from ddpinn.perf import machine

        env["cpu"] = machine()
    except Exception:  # the environment is reported whatever fails
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1),
                   gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}")
        try:
            env["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception as err:
            env["nccl"] = f"unavailable ({err})"
    return env


# ------------------------------------------------------------------------------------- driver
WORKERS = {
    "speed": lambda a: worker_speed(a["levels"], a["device"], False, a["steps"]),
    "compile": lambda a: worker_speed(a["levels"], a["device"], True, a["steps"]),
    "device_vs_cpu": lambda a: worker_device_vs_cpu(a["device"], a["steps"]),
    "gloo_2ranks": lambda a: worker_gloo_2ranks(a["device"], a["steps"], a["timeout_s"]),
}


def run_stage(kind: str, args: dict, timeout_s: float, cache_dir: str | None = None) -> dict:
    """Run worker ``kind`` in a fresh process within ``timeout_s``; its result or its failure."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if cache_dir:
        env.update(TORCHINDUCTOR_CACHE_DIR=cache_dir, TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
           json.dumps({**args, "timeout_s": timeout_s})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "error": (proc.stderr or proc.stdout)[-3000:].strip()}
    result = json.loads(lines[-1])
    passed = result.get("passed", True)
    return {"status": "ok" if passed else "mismatch", "result": result}


def summary_line(name: str, record: dict) -> str:
    if record["status"] not in ("ok", "mismatch"):
        last = record["error"].splitlines()[-1] if record.get("error") else ""
        return f"{name:16} {record['status']}: {last}"
    r = record["result"]
    if "ms_per_step" in r:
        extra = f", compile {r['compile_s']:.1f} s" if name.startswith("compile") else ""
        return (f"{name:16} {record['status']}: {r['ms_per_step']:.2f} ms/step, {r['us_per_pair']:.4f} µs/pair "
                f"({r['pairs']:,} pairs), peak {r['peak_memory_mb']:.0f} MB, set-up {r['setup_s']:.1f} s{extra}")
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in r["rel_diff"].items())
    return f"{name:16} {record['status']}: rel diff {diffs} (tolerance {r['tolerance']:.0e})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (small sizes, for CI)")
    p.add_argument("--levels", type=int, nargs="*", help="P4 levels to time (default 4..8 on a GPU, 2 on the CPU)")
    p.add_argument("--compile-levels", type=int, nargs="*",
                   help="levels to time compiled with a cold cache (default 4 on a GPU, none on the CPU)")
    p.add_argument("--steps", type=int, help="timed steps per speed stage (default 100 on a GPU, 5 on the CPU)")
    p.add_argument("--check-steps", type=int, default=5, help="Adam steps of the equivalence stages")
    p.add_argument("--budget-s", type=float, default=540.0, help="total time cap, seconds")
    p.add_argument("--stage-s", type=float, default=240.0, help="time cap of one stage, seconds")
    p.add_argument("--min-stage-s", type=float, default=20.0, help="start a stage only with this much budget left")
    p.add_argument("--skip", nargs="*", default=[],
                   help="stage names or kinds to leave out (e.g. speed_L8 gloo_2ranks)")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_check.json"))
    p.add_argument("--worker", nargs=2, metavar=("KIND", "ARGS"), help=argparse.SUPPRESS)
    p.add_argument("--train-small", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker[0]](json.loads(args.worker[1]))))
        return 0
    if args.train_small:
        train_small(args.train_small)
        return 0

    t_start = time.perf_counter()
    on_cpu = args.device == "cpu"
    levels = args.levels if args.levels is not None else ([2] if on_cpu else [4, 5, 6, 7, 8])
    compile_levels = args.compile_levels if args.compile_levels is not None else ([] if on_cpu else [4])
    steps = args.steps or (5 if on_cpu else 100)
    report = {"env": environment(), "args": vars(args), "stages": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = report["env"]
    print(f"env              torch {env['torch']}, CUDA {env['cuda_build']} (available: {env['cuda_available']}), "
          f"GPU {env.get('gpu', 'none')}, NCCL {env.get('nccl', 'n/a')}; {env['cpu']}", flush=True)
    if not on_cpu and not env["cuda_available"]:
        print("gpu_check: no CUDA device; use --device cpu for the CPU check", file=sys.stderr)

    # The correctness checks first: they are short, and matter most on a machine lent for minutes.
    stages = [("device_vs_cpu", "device_vs_cpu", {"steps": args.check_steps}),
              ("gloo_2ranks", "gloo_2ranks", {"steps": args.check_steps})]
    stages += [(f"speed_L{l}", "speed", {"levels": l, "steps": steps}) for l in levels]
    stages += [(f"compile_L{l}", "compile", {"levels": l, "steps": steps}) for l in compile_levels]
    for name, kind, stage_args in stages:
        left = args.budget_s - (time.perf_counter() - t_start)
        if name in args.skip or kind in args.skip:
            record = {"status": "skipped", "error": "--skip"}
        elif left < args.min_stage_s:
            spent = f"time budget spent ({left:.0f} s left of --budget-s {args.budget_s:g})"
            record = {"status": "skipped", "error": spent}
        else:
            t0 = time.perf_counter()
            cache = tempfile.mkdtemp(prefix="ddpinn_inductor_") if kind == "compile" else None
            try:
                record = run_stage(kind, {**stage_args, "device": args.device}, min(args.stage_s, left), cache)
            finally:
                if cache:
                    shutil.rmtree(cache, ignore_errors=True)
            record["seconds"] = time.perf_counter() - t0
        report["stages"][name] = record
        report["total_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(report, indent=1))
        print(summary_line(name, record), flush=True)
    bad = [n for n, r in report["stages"].items() if r["status"] not in ("ok", "skipped")]
    print(f"gpu_check: {len(report['stages']) - len(bad)} of {len(report['stages'])} stages ok or skipped "
          f"in {report['total_s']:.0f} s; wrote {out}" + (f"; not ok: {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
