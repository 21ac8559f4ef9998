"""Flip bytes in a real checkpoint and record what loading it does.

    python benchmarks/checkpoint_damage.py              # every 7th byte, ~8-13 min on 2 shared cores
    python benchmarks/checkpoint_damage.py --quick      # every 29th byte, ~2-3 min
    python benchmarks/checkpoint_damage.py --stride 1   # every byte

Trains a small cos1d run (Adam, then L-BFGS, so the checkpoint holds parameters, Adam moments
and L-BFGS pairs), then, for every ``stride``-th byte of its ``checkpoint.h5``, inverts that byte
in a copy and loads the copy with :func:`ddpinn.train.checkpoint.load_checkpoint`. Each flip ends
as one of: *reported* (a ``CheckpointError`` naming the file; split by what found it: the stored
SHA-256 digests, HDF5's own structure/metadata checksums, or the format attribute),
*harmless* (what loads is bit-for-bit the original: the byte was free space or padding),
*silent* (different contents loaded without an error: must be 0) or *crash* (any other
exception: must be 0). Then it cuts the file at 20 lengths and checks each is reported. Writes
``OUT/checkpoint_damage.json`` (a list of one row).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from ddpinn.cli import main as ddpinn_main
from ddpinn.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint

RUN = {
    "problem": {"name": "cos1d", "params": {"omega": 15.0}},
    "decomposition": {"levels": [{"subdomains": 8}], "overlap": 1.9},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": 200, "test_n": 300},
    "train": {"steps": 20, "log_every": 10, "eval_every": 10, "compile": "off"},
    "lbfgs": {"steps": 3},
    "run": {"name": "run", "threads": 1, "plots": False},
}


def same_contents(a: Checkpoint, b: Checkpoint) -> bool:
    meta = ("step", "epoch", "phase", "world_size", "config", "adam_step", "lbfgs_pairs")
    return all(getattr(a, m) == getattr(b, m) for m in meta) and a.arrays.keys() == b.arrays.keys() and all(
        a.arrays[k].dtype == b.arrays[k].dtype and np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays
    )


def found_by(message: str) -> str:
    if "does not match its checksum" in message or "is not in its list of datasets" in message:
        return "stored SHA-256 digests"
    if "attribute 'format'" in message or "format '" in message:
        return "format attribute"
    return "HDF5 structure and metadata checksums"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stride", type=int, default=None, help="flip every STRIDE-th byte (1: all; default 7)")
    p.add_argument("--quick", action="store_true", help="every 29th byte (a quarter of the default's flips)")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    args.stride = args.stride or (29 if args.quick else 7)

    with tempfile.TemporaryDirectory(prefix="ddpinn_damage_") as tmp:
        tmp = Path(tmp)
        data = dict(RUN, run={**RUN["run"], "output_dir": str(tmp / "runs")})
        (tmp / "run.yaml").write_text(yaml.safe_dump(data))
        if ddpinn_main(["train", str(tmp / "run.yaml"), "--quiet"]) != 0:
            sys.exit("checkpoint_damage: training the sample run failed")
        source = tmp / "runs" / "run" / "checkpoint.h5"
        original, raw = load_checkpoint(source), source.read_bytes()
        copy = tmp / "damaged.h5"

        outcomes: collections.Counter[str] = collections.Counter()
        reporters: collections.Counter[str] = collections.Counter()
        bad: list[dict] = []
        t0 = time.perf_counter()
        for offset in range(0, len(raw), args.stride):
            damaged = bytearray(raw)
            damaged[offset] ^= 0xFF
            copy.write_bytes(damaged)
            try:
                loaded = load_checkpoint(copy)
            except CheckpointError as err:
                outcomes["reported"] += 1
                reporters[found_by(str(err))] += 1
                continue
            except Exception as err:  # noqa: BLE001 - exactly what this benchmark looks for
                outcomes["crash"] += 1
                bad.append({"offset": offset, "error": f"{type(err).__name__}: {err}"})
                continue
            if same_contents(loaded, original):
                outcomes["harmless"] += 1
            else:
                outcomes["silent"] += 1
                bad.append({"offset": offset, "error": "different contents loaded without an error"})
        flip_seconds = time.perf_counter() - t0

        truncations = collections.Counter()
        for length in np.linspace(0, len(raw) - 1, 20).astype(int):
            copy.write_bytes(raw[:length])
            try:
                load_checkpoint(copy)
                truncations["loaded"] += 1
            except CheckpointError:
                truncations["reported"] += 1

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "checkpoint_bytes": len(raw),
        "datasets": len(original.arrays),
        "stride": args.stride,
        "flips": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "reported_by": dict(reporters),
        "problems": bad[:50],
        "truncations": dict(truncations),
        "seconds": round(flip_seconds, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "checkpoint_damage.json").write_text(json.dumps([result], indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if bad or truncations["loaded"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
