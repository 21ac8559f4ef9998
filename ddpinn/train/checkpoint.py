"""HDF5 checkpoints keyed by parameter name and global subdomain id, whatever the number of
processes, with a checksum on everything they hold and the previous checkpoint kept.

Layout of ``checkpoint.h5``::

    attrs: format, step, epoch, phase, world_size, adam_step, lbfgs_pairs, config (YAML),
           written_at, datasets (JSON list of every dataset key), attr_sha256 (JSON)
    level_<l>/<param>                          [n_subdomains, ...] parameters, rows = global ids
    level_<l>/adam_m/<param>, adam_v/<param>   Adam moments, same shape
    level_<l>/adam_t/<param>                   [n_subdomains] per-subdomain Adam step counts (a
                                               schedule's masked Adam; the plain Adam's one count
                                               is the attribute adam_step)
    level_<l>/lbfgs_s<k>/<param>, lbfgs_y<k>/<param>   L-BFGS correction pairs (if any)
    problem/<name>, problem/adam_m/<name>, ...         trainable problem parameters, shape [1]
    every dataset: attr sha256

A parameter's *name* is ``level_<l>/W<k>`` / ``level_<l>/b<k>`` (layer k, levels counted from 1),
``level_<l>/a<k>`` (adaptive slope of hidden layer k), ``level_<l>/B`` (Fourier frequencies; stored
without optimiser state when they are fixed) or ``problem/<name>``; its optimiser state lives under
``<group>/<state>/<leaf>`` (:class:`ArrayKey`). Adam and L-BFGS state are matched to parameters by
these names. The level names come from :meth:`StackedMLP.checkpoint_tensors
<ddpinn.model.mlp.StackedMLP.checkpoint_tensors>`.

Integrity: each dataset carries the SHA-256 of its key, dtype, shape and bytes; the root
attributes carry one digest each (``attr_sha256``), and ``datasets`` lists what must be there.
:func:`load_checkpoint` checks all of it before returning anything, so a flipped byte in a
weight, in Adam state, in ``step`` or in ``config`` is a :class:`CheckpointError` naming the
file and the dataset or attribute; so is a truncated file or damaged HDF5 structure (the file
is written with HDF5's newest format, whose own metadata is checksummed too).

Writing: each process contributes the rows of the subdomains it owns (rank 0 alone the
replicated levels); rank 0 writes a temporary file, fsyncs it, reads it back through
:func:`load_checkpoint`, keeps the current ``checkpoint.h5`` as ``checkpoint.prev.h5`` (only if
it verifies; a damaged one is kept aside as ``checkpoint.damaged.h5``, never overwritten) and
renames the new file into place. Loading picks the rows of the subdomains a process holds, so a
checkpoint written by R processes resumes on any other number. Used by the trainer, the resume
logic (:mod:`ddpinn.train.resume`) and ``ddpinn eval``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.comm import Communicator
from ddpinn.train.lbfgs import CorrectionPair, LBFGSState

__all__ = [
    "FORMAT",
    "ArrayKey",
    "Checkpoint",
    "CheckpointError",
    "ParamGroup",
    "damaged_path",
    "load_checkpoint",
    "named_parameters",
    "param_groups",
    "points_in_block",
    "previous_path",
    "restore",
    "save_checkpoint",
]

FORMAT = "ddpinn-checkpoint-2"
_DIGEST = "sha256"
_ATTR_DIGESTS = "attr_sha256"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged, or does not fit the model; names the file."""


def previous_path(latest: Path) -> Path:
    """Where the checkpoint before ``latest`` is kept: ``checkpoint.prev.h5``."""
    latest = Path(latest)
    return latest.with_name(f"{latest.stem}.prev{latest.suffix}")


def damaged_path(latest: Path) -> Path:
    """Where a damaged ``latest`` is set aside when a new checkpoint replaces it
    (``checkpoint.damaged.h5``, then ``checkpoint.damaged-2.h5``, ...; never overwritten)."""
    latest = Path(latest)
    candidate, n = latest.with_name(f"{latest.stem}.damaged{latest.suffix}"), 1
    while candidate.exists():
        n += 1
        candidate = latest.with_name(f"{latest.stem}.damaged-{n}{latest.suffix}")
    return candidate


# ----------------------------------------------------------------------------- names
@dataclass(frozen=True)
class ArrayKey:
    """A dataset key, split into the parameter it belongs to and what it holds of it."""

    parameter: str
    """``level_1/W0``, ``problem/mu``, ..."""
    state: str | None = None
    """None for the parameter's value, else ``adam_m``, ``adam_v``, ``lbfgs_s<k>`` or ``lbfgs_y<k>``."""

    def __str__(self) -> str:
        if self.state is None:
            return self.parameter
        group, leaf = self.parameter.rsplit("/", 1)
        return f"{group}/{self.state}/{leaf}"

    @classmethod
    def parse(cls, key: str) -> ArrayKey:
        parts = key.split("/")
        if len(parts) == 2:
            return cls(key)
        if len(parts) == 3:
            return cls(f"{parts[0]}/{parts[2]}", parts[1])
        raise ValueError(f"{key!r} is not a checkpoint dataset key")


@dataclass(frozen=True, eq=False)
class ParamGroup:
    """Parameters stored under ``prefix`` with rows ``ids``; ``contribute``: this process writes them."""

    prefix: str
    ids: np.ndarray
    params: list[tuple[str, torch.nn.Parameter]]
    """(leaf name, parameter): ``("W0", ...)``; the full name is ``prefix/leaf``."""
    contribute: bool
    fixed: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    """(leaf name, tensor) stored and restored like the parameters but not trained, so without
    optimiser state: the fixed Fourier frequencies ``B``."""

    def named(self) -> dict[str, torch.nn.Parameter]:
        return {f"{self.prefix}/{leaf}": p for leaf, p in self.params}

    def named_fixed(self) -> dict[str, torch.Tensor]:
        return {f"{self.prefix}/{leaf}": t for leaf, t in self.fixed}


def _level_group(level: int, ids: np.ndarray, net: torch.nn.Module, contribute: bool) -> ParamGroup:
    trained, fixed = net.checkpoint_tensors()
    return ParamGroup(f"level_{level + 1}", ids, trained, contribute, fixed)


def param_groups(
    model: FBPINN, trainables: torch.nn.Module | None, owned_levels: list[bool], is_root: bool
) -> list[ParamGroup]:
    """The checkpoint's view of a process's parameters: one group per level, then the problem's."""
    groups = [
        _level_group(level, model.held[level], net, owned_levels[level]) for level, net in enumerate(model.nets)
    ]
    if trainables is not None and len(list(trainables.parameters())):
        groups.append(ParamGroup("problem", np.zeros(1, dtype=np.int64), list(trainables.named_values()), is_root))
    return groups


def named_parameters(model: FBPINN, trainables: torch.nn.Module | None) -> dict[str, torch.nn.Parameter]:
    """Every parameter this process holds, by checkpoint name (``level_1/W0``, ``problem/mu``)."""
    groups = param_groups(model, trainables, [False] * model.n_levels, False)
    return {name: p for group in groups for name, p in group.named().items()}


# ----------------------------------------------------------------------------- checksums
def _array_digest(key: str, data: np.ndarray) -> str:
    """SHA-256 of a dataset's key, dtype, shape and bytes (so a renamed, retyped or reshaped
    dataset fails too)."""
    h = hashlib.sha256(f"{key}|{data.dtype.str}|{data.shape}|".encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


def _attr_digest(name: str, value: Any) -> str:
    return hashlib.sha256(f"{name}|{type(value).__name__}|{value}".encode()).hexdigest()


def _plain(value: Any) -> Any:
    """An attribute as h5py returns it -> the Python value it was written from."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):  # never written so; a damaged file may hold any bytes
        return value.decode("utf-8", "surrogateescape")
    return value


# ----------------------------------------------------------------------------- saving
def _local_arrays(groups: list[ParamGroup], adam: torch.optim.Optimizer | None, lbfgs: LBFGSState | None):
    """{key: (global ids, rows)} for every array this process contributes, keyed by name."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group in groups:
        if not group.contribute:
            continue
        for name, p in group.named().items():
            tensors = {ArrayKey(name): p}
            state = adam.state.get(p, {}) if adam is not None else {}
            if "exp_avg" in state:
                tensors[ArrayKey(name, "adam_m")] = state["exp_avg"]
                tensors[ArrayKey(name, "adam_v")] = state["exp_avg_sq"]
                if state["step"].dim():  # per-row counts: a subdomain counts only its active steps
                    tensors[ArrayKey(name, "adam_t")] = state["step"]
            for k, pair in enumerate(lbfgs.pairs if lbfgs is not None else []):
                tensors[ArrayKey(name, f"lbfgs_s{k}")] = pair.s[name]
                tensors[ArrayKey(name, f"lbfgs_y{k}")] = pair.y[name]
            for key, t in tensors.items():
                # one row per subdomain; a 0-d problem parameter becomes one row of shape [1]
                rows = t.detach().cpu().numpy().reshape(len(group.ids), *t.shape[1:] if t.dim() else ())
                out[str(key)] = (group.ids, rows)
        for name, t in group.named_fixed().items():
            out[name] = (group.ids, t.detach().cpu().numpy())
    return out


def _adam_step(adam: torch.optim.Optimizer | None) -> int:
    """Adam's step count (the largest per-row count of a schedule's masked Adam; 0 before the
    first step)."""
    states = list(adam.state.values()) if adam is not None else []
    return max((int(state["step"].max()) for state in states), default=0)


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
    lbfgs: LBFGSState | None = None,
    point_rows: dict[str, np.ndarray] | None = None,
    global_arrays: dict[str, np.ndarray] | None = None,
) -> str | None:
    """Gather every subdomain's state to rank 0, write ``path`` and keep the checkpoint it
    replaces as :func:`previous_path`.

    ``groups``: from :func:`param_groups`; a process contributes its own subdomains of a
    partitioned level, rank 0 alone the replicated ones. ``point_rows``: this rank's per-point
    arrays (``points/<group>/<field>``, rows of its own points), stored as every rank's rows in
    rank order; a reader picks its points by position (:func:`points_in_block`).
    ``global_arrays``: replicated state, written from rank 0. Returns, on rank 0, a note to show
    the user when the checkpoint being replaced was damaged (it is set aside, not rotated).
    """
    local = (_local_arrays(groups, adam, lbfgs), dict(point_rows or {}))
    gathered = comm.allgather_object(local) if comm.world_size > 1 else [local]
    if comm.rank != 0:
        return None
    merged: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for part, _ in gathered:
        for key, piece in part.items():
            merged.setdefault(key, []).append(piece)
    arrays = {}
    for key, pieces in merged.items():
        all_ids = np.concatenate([ids for ids, _ in pieces])
        order = np.argsort(all_ids)
        if not np.array_equal(all_ids[order], np.arange(all_ids.size)):
            raise CheckpointError(f"{key}: subdomain ids from the ranks do not form 0..n-1")
        arrays[key] = np.concatenate([rows for _, rows in pieces])[order]
    for key in gathered[0][1]:
        arrays[key] = np.concatenate([rows[key] for _, rows in gathered])
    arrays.update(global_arrays or {})
    attrs = {
        "format": FORMAT,
        "step": int(step),
        "epoch": int(epoch),
        "phase": phase,
        "world_size": comm.world_size,
        "adam_step": _adam_step(adam),
        "lbfgs_pairs": len(lbfgs.pairs) if lbfgs is not None else 0,
        "config": config_yaml,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "datasets": json.dumps(sorted(arrays)),
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write(tmp, attrs, arrays)
        load_checkpoint(tmp)  # read back: what lands in place has been verified once
        note = _keep_current(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return note


def _write(path: Path, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w", libver="latest") as f:
        for key, data in arrays.items():
            f.create_dataset(key, data=data).attrs[_DIGEST] = _array_digest(key, data)
        f.attrs.update(attrs)
        f.attrs[_ATTR_DIGESTS] = json.dumps({k: _attr_digest(k, v) for k, v in attrs.items()}, sort_keys=True)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _keep_current(latest: Path) -> str | None:
    """Before ``latest`` is replaced: keep it as the previous checkpoint if it verifies, else set
    it aside under :func:`damaged_path`. ``latest`` stays in place either way (hard link or copy),
    so there is never a moment without it."""
    if not latest.exists():
        return None
    try:
        load_checkpoint(latest)
    except CheckpointError as err:
        kept = damaged_path(latest)
        _link_or_copy(latest, kept)
        return f"{err}; kept it as {kept} and did not make it the previous checkpoint"
    _link_or_copy(latest, previous_path(latest))
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, target)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------- loading
@dataclass
class Checkpoint:
    """A loaded, verified checkpoint: metadata and full arrays (rows = global subdomain ids)."""

    path: Path
    step: int
    epoch: int
    phase: str
    world_size: int
    config: str
    """The run's resolved config (YAML) when the checkpoint was written."""
    adam_step: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    lbfgs_pairs: int = 0

    def rows(self, key: str, ids: np.ndarray) -> np.ndarray:
        return self.arrays[key][ids]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify ``path``: every attribute and dataset against its checksum, and that the
    datasets are exactly those listed. Raises :class:`CheckpointError` (file and dataset or
    attribute named) on any damage; returns nothing partial."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    reading = "the HDF5 file structure"
    try:
        with h5py.File(path, "r") as f:
            reading = "the attributes"
            attrs = _verified_attributes(f, path)
            declared = json.loads(attrs["datasets"])
            present: list[str] = []
            f.visititems(lambda name, obj: present.append(name) if isinstance(obj, h5py.Dataset) else None)
            unlisted = sorted(set(present) - set(declared))
            if unlisted:
                raise CheckpointError(
                    f"checkpoint {path} is damaged: dataset {unlisted[0]!r} is not in its list of datasets"
                )
            arrays = {}
            for key in declared:
                reading = f"dataset {key}"
                arrays[key] = _verified_dataset(f, key, path)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - HDF5 reports damage as OSError, KeyError, ValueError, ...
        raise CheckpointError(
            f"checkpoint {path} is damaged or truncated: cannot read {reading} ({type(err).__name__}: {err})"
        ) from None
    return Checkpoint(
        path=path,
        step=int(attrs["step"]),
        epoch=int(attrs["epoch"]),
        phase=str(attrs["phase"]),
        world_size=int(attrs["world_size"]),
        config=str(attrs["config"]),
        adam_step=int(attrs["adam_step"]),
        arrays=arrays,
        lbfgs_pairs=int(attrs["lbfgs_pairs"]),
    )


def _verified_attributes(f: h5py.File, path: Path) -> dict[str, Any]:
    fmt = _plain(f.attrs.get("format"))
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("ddpinn-checkpoint-") and fmt.rsplit("-", 1)[1].isdigit():
            raise CheckpointError(
                f"checkpoint {path}: format {fmt!r}, expected {FORMAT!r} (checkpoints of other ddpinn versions "
                "cannot be verified; train the run again)"
            )
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a ddpinn checkpoint: attribute 'format' is {fmt!r}, "
            f"expected {FORMAT!r}"
        )
    if _ATTR_DIGESTS not in f.attrs:
        raise CheckpointError(f"checkpoint {path} is damaged: attribute {_ATTR_DIGESTS} is missing")
    digests = json.loads(_plain(f.attrs[_ATTR_DIGESTS]))
    attrs = {name: _plain(value) for name, value in f.attrs.items() if name != _ATTR_DIGESTS}
    for name in sorted(set(digests) | set(attrs)):
        if name not in attrs or name not in digests or _attr_digest(name, attrs[name]) != digests[name]:
            raise CheckpointError(
                f"checkpoint {path} is damaged: attribute {name!r} does not match its checksum"
            )
    return attrs


def _verified_dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    if key not in f:
        raise CheckpointError(f"checkpoint {path} is damaged: dataset {key} is missing")
    dataset = f[key]
    if dataset.nbytes > path.stat().st_size:  # a damaged shape must not make us allocate terabytes
        raise CheckpointError(f"checkpoint {path} is damaged: dataset {key} claims {dataset.nbytes} bytes")
    data = dataset[()]
    stored = _plain(dataset.attrs.get(_DIGEST))
    if stored != _array_digest(key, data):
        raise CheckpointError(f"checkpoint {path} is damaged: dataset {key} does not match its checksum")
    return data


# ----------------------------------------------------------------------------- restoring
def points_in_block(ckpt: Checkpoint, block) -> dict[str, dict[str, np.ndarray]]:
    """The checkpoint's per-point arrays of the points inside ``block`` (an ownership
    :class:`~ddpinn.geometry.Block`), in their stored order: group -> field -> rows; field ``x``
    holds the points. Works for any rank count at writing and reading."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, rows in ckpt.arrays.items():
        parts = key.split("/")
        if parts[0] == "points" and len(parts) == 3:
            out.setdefault(parts[1], {})[parts[2]] = rows
    for group, fields in out.items():
        if "x" not in fields:
            raise CheckpointError(f"checkpoint {ckpt.path} is damaged: points/{group} has fields but no points/{group}/x")
        mask = block.contains(fields["x"])
        out[group] = {name: rows[mask] for name, rows in fields.items()}
    return out



def restore(ckpt: Checkpoint, groups: list[ParamGroup], adam: torch.optim.Optimizer | None) -> LBFGSState:
    """Load the held parameters, fixed tensors and optimiser state of ``groups`` (rows picked by
    global id, state matched by parameter name). Every array is checked against its parameter first, so a
    checkpoint that does not fit changes nothing."""
    values: dict[str, torch.Tensor] = {}
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    counts: dict[str, torch.Tensor] = {}
    pairs = [CorrectionPair(s={}, y={}) for _ in range(ckpt.lbfgs_pairs)]

    def load(key: ArrayKey, ids: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        if str(key) not in ckpt.arrays:
            raise CheckpointError(
                f"checkpoint {ckpt.path} has no {key}; was it written for another decomposition or problem?"
            )
        rows = ckpt.rows(str(key), ids)
        if rows.size != like.numel() or (like.dim() and rows.shape != tuple(like.shape)):
            raise CheckpointError(f"{key}: checkpoint rows {rows.shape} do not fit parameter {tuple(like.shape)}")
        return torch.from_numpy(rows).reshape(like.shape).to(like)

    for group in groups:
        for name, t in group.named_fixed().items():
            values[name] = load(ArrayKey(name), group.ids, t)
        for name, p in group.named().items():
            values[name] = load(ArrayKey(name), group.ids, p)
            if adam is not None and str(ArrayKey(name, "adam_m")) in ckpt.arrays:
                moments[name] = tuple(load(ArrayKey(name, state), group.ids, p) for state in ("adam_m", "adam_v"))
                if str(ArrayKey(name, "adam_t")) in ckpt.arrays:
                    counts[name] = load(ArrayKey(name, "adam_t"), group.ids, p.new_empty(len(group.ids)))
            for k, pair in enumerate(pairs):
                pair.s[name] = load(ArrayKey(name, f"lbfgs_s{k}"), group.ids, p)
                pair.y[name] = load(ArrayKey(name, f"lbfgs_y{k}"), group.ids, p)

    with torch.no_grad():
        for group in groups:
            for name, t in group.named_fixed().items():
                t.copy_(values[name])
            for name, p in group.named().items():
                p.copy_(values[name])
                if name in moments:
                    adam.state[p] = {
                        "step": counts[name] if name in counts
                        else torch.tensor(float(ckpt.adam_step), dtype=torch.float32, device=p.device),
                        "exp_avg": moments[name][0],
                        "exp_avg_sq": moments[name][1],
                    }
    return LBFGSState(pairs=pairs)
