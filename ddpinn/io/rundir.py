"""Run directories: the checks made before any model is built, and replacing files safely.

Defines :func:`check_run_directory` (``run.output_dir`` usable; an existing run never replaced
unless asked), :func:`clear_run` (what ``ddpinn train --overwrite`` deletes) and
:func:`write_text_atomic`. Used by :mod:`ddpinn.session` and the trainer.

A directory *holds a run* when it has any of :data:`RESULT_FILES` or a non-empty
``metrics.jsonl``; a directory with only a ``config.yaml`` (a run that stopped before its first
logged step) is reused without asking.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpinn.config import ConfigError

__all__ = ["RESULT_FILES", "check_run_directory", "clear_run", "existing_run_files", "write_text_atomic"]

RESULT_FILES = ("checkpoint.h5", "checkpoint.prev.h5", "summary.json", "results.h5")
"""Files whose presence means the directory holds a run's results."""
_WRITTEN = ("config.yaml", "metrics.jsonl", *RESULT_FILES)
_PLOTS = ("solution.png", "decomposition.png", "curves.png", "points.png")
_LEFT_OVER = ("checkpoint.damaged*.h5", ".checkpoint*.tmp-*", ".config.yaml.tmp-*", ".results.h5.tmp")
"""Set-aside damaged checkpoints and temporary files of interrupted writes."""


def existing_run_files(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` hold a run (empty: nothing would be lost)."""
    run_dir = Path(run_dir)
    found = [name for name in RESULT_FILES if (run_dir / name).exists()]
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics.name)
    return found


def check_run_directory(output_dir: str | Path, name: str, *, resume: bool, overwrite: bool) -> Path:
    """``output_dir/name`` after checking, before any model building, that the run can be written
    there: a :class:`ConfigError` naming ``run.output_dir`` (or ``run.name``) otherwise, and when a
    new run (not ``resume``, not ``overwrite``) would replace an existing one."""
    output_dir = Path(output_dir)
    run_dir = output_dir / name
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        where = "run.name" if existing == run_dir else "run.output_dir"
        raise ConfigError(
            f"{where}: cannot write the run to {run_dir}: {existing} is a file, not a directory; "
            "set run.output_dir (or run.name) to a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"run.output_dir: cannot write the run to {run_dir}: {existing} is not writable; "
            "set run.output_dir to a directory you can write to"
        )
    if not resume and not overwrite:
        found = existing_run_files(run_dir)
        if found:
            raise ConfigError(
                f"run.name: {run_dir} already holds a run ({', '.join(found)}); continue it with "
                f"`ddpinn train --resume {run_dir}`, start it again with `--overwrite` (deletes the files "
                "ddpinn wrote there), or choose another run.name"
            )
    return run_dir


def clear_run(run_dir: Path) -> list[Path]:
    """Delete what ddpinn writes in ``run_dir`` (config, metrics, checkpoints, including set-aside
    damaged ones, results, summary, plots); other files and the directory itself stay. Safe to
    call from several processes at once. Returns the deleted paths."""
    run_dir = Path(run_dir)
    candidates = [run_dir / name for name in _WRITTEN] + [run_dir / "plots" / name for name in _PLOTS]
    candidates += [p for pattern in _LEFT_OVER for p in sorted(run_dir.glob(pattern))]
    candidates += sorted(run_dir.glob("points/event_*_rank*.npy"))  # adaptive sampling's record
    deleted = []
    for path in candidates:
        if path.is_file():
            path.unlink(missing_ok=True)
            deleted.append(path)
    for sub in (run_dir / "plots", run_dir / "points"):
        if sub.is_dir() and not any(sub.iterdir()):
            try:
                sub.rmdir()
            except OSError:  # another process removed it first, or a file appeared
                pass
    return deleted


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
