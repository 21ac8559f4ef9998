"""Which checkpoint a run continues from, and whether the config still describes its model.

Defines :func:`find_resume_point` (the latest checkpoint, or the previous one when the latest is
damaged or missing, with a note saying so) and :func:`check_same_model`, which refuses a config
whose model-defining fields (:data:`MODEL_FIELDS`) differ from the checkpoint's, listing each
difference as ``dotted.name: old -> new``. Everything else (steps, learning rate, logging,
sampling, the number of ranks and their layout, threads, device) may change on resume. Used by
``ddpinn train --resume``, ``ddpinn eval`` (:mod:`ddpinn.session`) and the trainer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ddpinn.config import Config, ConfigError, ProblemConfig, to_dict
from ddpinn.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, previous_path

__all__ = ["MODEL_FIELDS", "FieldChange", "ResumePoint", "check_same_model", "find_resume_point", "model_changes"]

MODEL_FIELDS = ("problem", "decomposition", "network", "run.dtype")
"""Config fields that define the model a checkpoint holds: what is solved (problem name and
parameters), the subdomains and windows, the networks and their output scaling, and the
floating-point type the parameters are stored in."""


@dataclass(frozen=True)
class ResumePoint:
    """The verified checkpoint a run continues from."""

    checkpoint: Checkpoint
    note: str | None = None
    """Why it is not the latest checkpoint (that one is damaged or missing); None if it is."""


def find_resume_point(run_dir: Path) -> ResumePoint:
    """``run_dir/checkpoint.h5`` if it verifies, else ``checkpoint.prev.h5`` with a note; a
    :class:`CheckpointError` naming both files when neither can be used."""
    latest = Path(run_dir) / "checkpoint.h5"
    previous = previous_path(latest)
    if not latest.exists() and not previous.exists():
        raise CheckpointError(f"no checkpoint in {run_dir}: {latest} does not exist")
    try:
        return ResumePoint(load_checkpoint(latest))
    except CheckpointError as latest_error:
        if not previous.exists():
            raise CheckpointError(f"{latest_error}, and there is no previous checkpoint ({previous})") from None
        try:
            checkpoint = load_checkpoint(previous)
        except CheckpointError as previous_error:
            raise CheckpointError(f"{latest_error}; the previous one cannot be used either: {previous_error}") from None
        note = f"{latest_error}; using the previous checkpoint {previous} (step {checkpoint.step})"
        return ResumePoint(checkpoint, note=note)


@dataclass(frozen=True)
class FieldChange:
    """One model-defining config field that differs: ``field`` is its dotted name."""

    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field}: {_show(self.old)} -> {_show(self.new)}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _leaves(value: Any, where: str) -> dict[str, Any]:
    """Dotted name -> value of every leaf; a list of mappings is entered (``levels[0].subdomains``),
    a list of plain values is one leaf (``hidden: [16, 16]``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{where}.{key}").items()}
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{where}[{i}]").items()}
    return {where: value}


def _field(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key, _ABSENT) if isinstance(data, dict) else _ABSENT
    return data


def model_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[FieldChange]:
    """The differences between two config mappings (as :func:`ddpinn.config.to_dict` gives them)
    in :data:`MODEL_FIELDS`, leaf by leaf. Where the shape itself differs (an int level count
    against a list of levels, two levels against three), the differing leaves are listed."""
    changes = []
    defaults = to_dict(Config(problem=ProblemConfig(name="")))
    for name in MODEL_FIELDS:
        old, new = _leaves(_field(saved, name), name), _leaves(_field(current, name), name)
        # A field added to ddpinn after the checkpoint was written reads as its default there.
        missing = _leaves(_field(defaults, name), name)
        for leaf in sorted(set(old) | set(new)):
            before, after = old.get(leaf, missing.get(leaf, _ABSENT)), new.get(leaf, _ABSENT)
            if before != after:
                changes.append(FieldChange(leaf, before, after))
    return changes


def check_same_model(checkpoint: Checkpoint, cfg: Config, action: str) -> None:
    """Refuse ``cfg`` (a :class:`ConfigError` listing the fields) if it defines another model
    than the one ``checkpoint`` holds. ``action`` names what is refused (``--resume RUN``)."""
    changes = model_changes(yaml.safe_load(checkpoint.config), to_dict(cfg))
    if changes:
        listed = "\n".join(f"  {change}" for change in changes)
        raise ConfigError(
            f"{action}: the config defines another model than the checkpoint {checkpoint.path} holds "
            f"(fields {', '.join(MODEL_FIELDS)} must not change):\n{listed}\n"
            "Start a new run (another run.name) to train a different model."
        )
