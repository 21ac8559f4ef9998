"""HDF5 checkpoints keyed by (level, global subdomain id), whatever the number of processes.

Layout of ``checkpoint.h5``::

    attrs: format, step, epoch, phase, world_size, config (YAML), written_at
    level_<l>/<param>                 [n_subdomains, ...] every subdomain's parameters, by global id
    level_<l>/adam_m/<param>, adam_v/<param>   Adam moments, same shape
    level_<l>/lbfgs_s<k>/<param>, lbfgs_y<k>/<param>   L-BFGS correction pairs (if any)
    adam attrs: step                  Adam's step count

``<param>`` is ``W<k>``/``b<k>`` of layer k; ``<l>`` counts levels from 1. Each process
contributes the rows of the subdomains it owns (rank 0 alone for replicated levels); rank 0
writes the file atomically (temporary file, fsync, rename), so a crash mid-write leaves the
previous checkpoint intact. Loading picks the rows of the subdomains a process holds, so a
checkpoint written by R processes resumes on any other number.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.comm import Communicator
from ddpinn.train.lbfgs import LBFGSState

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT"]

FORMAT = "ddpinn-checkpoint-1"


class CheckpointError(RuntimeError):
    pass


def _param_names(model: FBPINN, level: int) -> list[tuple[str, torch.nn.Parameter]]:
    net = model.nets[level]
    return [(f"W{k}", w) for k, w in enumerate(net.weights)] + [(f"b{k}", b) for k, b in enumerate(net.biases)]


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata and full per-level arrays (rows = global subdomain ids)."""

    step: int
    epoch: int
    phase: str
    world_size: int
    config: str
    adam_step: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    lbfgs_pairs: int = 0

    def rows(self, key: str, ids: np.ndarray) -> np.ndarray:
        return self.arrays[key][ids]


def _local_rows(model: FBPINN, adam: torch.optim.Optimizer | None, lbfgs: LBFGSState | None, contribute: list[bool]):
    """{key: (global ids, rows)} for every array this process contributes."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    params = list(model.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    for level in range(model.n_levels):
        if not contribute[level]:
            continue
        ids = model.held[level]
        for name, p in _param_names(model, level):
            prefix = f"level_{level + 1}"
            out[f"{prefix}/{name}"] = (ids, p.detach().cpu().numpy())
            state = adam.state.get(p, {}) if adam is not None else {}
            if "exp_avg" in state:
                out[f"{prefix}/adam_m/{name}"] = (ids, state["exp_avg"].detach().cpu().numpy())
                out[f"{prefix}/adam_v/{name}"] = (ids, state["exp_avg_sq"].detach().cpu().numpy())
            if lbfgs is not None:
                i = index[id(p)]
                for k, (s, y) in enumerate(zip(lbfgs.s, lbfgs.y)):
                    out[f"{prefix}/lbfgs_s{k}/{name}"] = (ids, s[i].detach().cpu().numpy())
                    out[f"{prefix}/lbfgs_y{k}/{name}"] = (ids, y[i].detach().cpu().numpy())
    return out


def save_checkpoint(
    path: Path,
    *,
    model: FBPINN,
    comm: Communicator,
    owned_levels: list[bool],
    step: int,
    epoch: int,
    phase: str,
    config_yaml: str,
    adam: torch.optim.Optimizer | None,
    adam_step: int,
    lbfgs: LBFGSState | None = None,
) -> None:
    """Gather every subdomain's state to rank 0 and write ``path`` atomically.

    ``owned_levels[l]``: whether this process contributes level l (its own subdomains of a
    partitioned level; rank 0 alone for a replicated one).
    """
    local = _local_rows(model, adam, lbfgs, owned_levels)
    gathered = comm.allgather_object(local) if comm.world_size > 1 else [local]
    if comm.rank != 0:
        return
    merged: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for part in gathered:
        for key, piece in part.items():
            merged.setdefault(key, []).append(piece)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(
            format=FORMAT,
            step=step,
            epoch=epoch,
            phase=phase,
            world_size=comm.world_size,
            config=config_yaml,
            written_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            lbfgs_pairs=len(lbfgs.s) if lbfgs is not None else 0,
        )
        f.create_group("adam").attrs["step"] = adam_step
        for key, pieces in merged.items():
            all_ids = np.concatenate([ids for ids, _ in pieces])
            all_rows = np.concatenate([rows for _, rows in pieces])
            order = np.argsort(all_ids)
            if not np.array_equal(all_ids[order], np.arange(all_ids.size)):
                raise CheckpointError(f"{key}: subdomain ids from the ranks do not form 0..n-1")
            f.create_dataset(key, data=all_rows[order])
        f.flush()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a {FORMAT} file (format {f.attrs.get('format')!r})")
        arrays: dict[str, np.ndarray] = {}
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return Checkpoint(
            step=int(f.attrs["step"]),
            epoch=int(f.attrs["epoch"]),
            phase=str(f.attrs["phase"]),
            world_size=int(f.attrs["world_size"]),
            config=str(f.attrs["config"]),
            adam_step=int(f["adam"].attrs["step"]),
            arrays=arrays,
            lbfgs_pairs=int(f.attrs.get("lbfgs_pairs", 0)),
        )


def restore(ckpt: Checkpoint, model: FBPINN, adam: torch.optim.Optimizer | None) -> LBFGSState:
    """Load the held subdomains' parameters and optimiser state into ``model``/``adam``."""
    lbfgs = LBFGSState(s=[[] for _ in range(ckpt.lbfgs_pairs)], y=[[] for _ in range(ckpt.lbfgs_pairs)])
    with torch.no_grad():
        for level in range(model.n_levels):
            ids = model.held[level]
            prefix = f"level_{level + 1}"
            for name, p in _param_names(model, level):
                key = f"{prefix}/{name}"
                if key not in ckpt.arrays:
                    raise CheckpointError(f"checkpoint has no {key}; was it written for another decomposition?")
                rows = ckpt.rows(key, ids)
                if rows.shape != tuple(p.shape):
                    raise CheckpointError(f"{key}: checkpoint rows {rows.shape} do not fit parameter {tuple(p.shape)}")
                p.copy_(torch.from_numpy(rows))
                if adam is not None and f"{prefix}/adam_m/{name}" in ckpt.arrays:
                    adam.state[p] = {
                        "step": torch.tensor(float(ckpt.adam_step), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.from_numpy(ckpt.rows(f"{prefix}/adam_m/{name}", ids)).to(p),
                        "exp_avg_sq": torch.from_numpy(ckpt.rows(f"{prefix}/adam_v/{name}", ids)).to(p),
                    }
                for k in range(ckpt.lbfgs_pairs):
                    lbfgs.s[k].append(torch.from_numpy(ckpt.rows(f"{prefix}/lbfgs_s{k}/{name}", ids)).to(p))
                    lbfgs.y[k].append(torch.from_numpy(ckpt.rows(f"{prefix}/lbfgs_y{k}/{name}", ids)).to(p))
    return lbfgs
