"""HDF5 checkpoints keyed by (level, global subdomain id), whatever the number of processes.

Layout of ``checkpoint.h5``::

    attrs: format, step, epoch, phase, world_size, config (YAML), written_at
    level_<l>/<param>                 [n_subdomains, ...] every subdomain's parameters, by global id
    level_<l>/adam_m/<param>, adam_v/<param>   Adam moments, same shape
    level_<l>/lbfgs_s<k>/<param>, lbfgs_y<k>/<param>   L-BFGS correction pairs (if any)
    problem/<name>, problem/adam_m/<name>, ...        trainable problem parameters, shape [1]
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

__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "ParamGroup", "load_checkpoint", "param_groups", "restore", "save_checkpoint"]

FORMAT = "ddpinn-checkpoint-1"


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True, eq=False)
class ParamGroup:
    """Parameters stored under ``prefix`` with rows ``ids``; ``contribute``: this process writes them."""

    prefix: str
    ids: np.ndarray
    params: list[tuple[str, torch.nn.Parameter]]
    contribute: bool


def param_groups(model: FBPINN, trainables: torch.nn.Module | None, owned_levels: list[bool], is_root: bool) -> list[ParamGroup]:
    """The checkpoint's view of a process's parameters, in optimiser order (model, then problem)."""
    groups = []
    for level, net in enumerate(model.nets):
        named = [(f"W{k}", w) for k, w in enumerate(net.weights)] + [(f"b{k}", b) for k, b in enumerate(net.biases)]
        groups.append(ParamGroup(f"level_{level + 1}", model.held[level], named, owned_levels[level]))
    if trainables is not None and len(list(trainables.parameters())):
        groups.append(ParamGroup("problem", np.zeros(1, dtype=np.int64), list(trainables.named_values()), is_root))
    return groups


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


def _local_rows(groups: list[ParamGroup], adam: torch.optim.Optimizer | None, lbfgs: LBFGSState | None):
    """{key: (global ids, rows)} for every array this process contributes."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    position = 0
    for group in groups:
        for name, p in group.params:
            i, position = position, position + 1
            if not group.contribute:
                continue

            def rows(t: torch.Tensor) -> np.ndarray:
                return t.detach().cpu().numpy().reshape(len(group.ids), *t.shape[1:] if t.dim() else ())

            out[f"{group.prefix}/{name}"] = (group.ids, rows(p))
            state = adam.state.get(p, {}) if adam is not None else {}
            if "exp_avg" in state:
                out[f"{group.prefix}/adam_m/{name}"] = (group.ids, rows(state["exp_avg"]))
                out[f"{group.prefix}/adam_v/{name}"] = (group.ids, rows(state["exp_avg_sq"]))
            if lbfgs is not None:
                for k, (s, y) in enumerate(zip(lbfgs.s, lbfgs.y)):
                    out[f"{group.prefix}/lbfgs_s{k}/{name}"] = (group.ids, rows(s[i]))
                    out[f"{group.prefix}/lbfgs_y{k}/{name}"] = (group.ids, rows(y[i]))
    return out


def save_checkpoint(
    path: Path,
    *,
    groups: list[ParamGroup],
    comm: Communicator,
    step: int,
    epoch: int,
    phase: str,
    config_yaml: str,
    adam: torch.optim.Optimizer | None,
    adam_step: int,
    lbfgs: LBFGSState | None = None,
) -> None:
    """Gather every subdomain's state to rank 0 and write ``path`` atomically.

    ``groups``: from :func:`param_groups`; a process contributes its own subdomains of a
    partitioned level, rank 0 alone the replicated ones.
    """
    local = _local_rows(groups, adam, lbfgs)
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


def restore(ckpt: Checkpoint, groups: list[ParamGroup], adam: torch.optim.Optimizer | None) -> LBFGSState:
    """Load the held parameters and optimiser state of ``groups`` (rows picked by global id)."""
    lbfgs = LBFGSState(s=[[] for _ in range(ckpt.lbfgs_pairs)], y=[[] for _ in range(ckpt.lbfgs_pairs)])

    def load(key: str, ids: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        rows = ckpt.rows(key, ids)
        if rows.size != like.numel() or (like.dim() and rows.shape != tuple(like.shape)):
            raise CheckpointError(f"{key}: checkpoint rows {rows.shape} do not fit parameter {tuple(like.shape)}")
        return torch.from_numpy(rows).reshape(like.shape).to(like)

    with torch.no_grad():
        for group in groups:
            for name, p in group.params:
                key = f"{group.prefix}/{name}"
                if key not in ckpt.arrays:
                    raise CheckpointError(f"checkpoint has no {key}; was it written for another decomposition or problem?")
                p.copy_(load(key, group.ids, p))
                if adam is not None and f"{group.prefix}/adam_m/{name}" in ckpt.arrays:
                    adam.state[p] = {
                        "step": torch.tensor(float(ckpt.adam_step), dtype=torch.float32, device=p.device),
                        "exp_avg": load(f"{group.prefix}/adam_m/{name}", group.ids, p),
                        "exp_avg_sq": load(f"{group.prefix}/adam_v/{name}", group.ids, p),
                    }
                for k in range(ckpt.lbfgs_pairs):
                    lbfgs.s[k].append(load(f"{group.prefix}/lbfgs_s{k}/{name}", group.ids, p))
                    lbfgs.y[k].append(load(f"{group.prefix}/lbfgs_y{k}/{name}", group.ids, p))
    return lbfgs
