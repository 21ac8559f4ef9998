"""What a run writes (rank 0 only): the metrics log, progress lines and the results file.

Run directory layout::

    config.yaml      the resolved config (every default filled in)
    metrics.jsonl    one JSON object per logged step: loss, terms, lr, steps/s, test errors
    checkpoint.h5    see ddpinn.train.checkpoint
    checkpoint.prev.h5  the checkpoint before it, kept for --resume when the latest is damaged
    results.h5       test grid: x, prediction, exact, error (grid-shaped), errors as attrs
    summary.json     final errors, timings, sizes
    plots/*.png      see ddpinn.io.plots
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import h5py
import numpy as np

__all__ = ["MetricsLog", "Progress", "write_results", "read_metrics", "format_duration"]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class MetricsLog:
    """Append-only JSON-lines metrics; on resume, entries after the checkpoint's step are dropped
    so the file reads as if the run had never stopped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """One line per logged step: step, loss, test error, throughput and ETA."""

    def __init__(self, total_steps: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._t0 = time.perf_counter()
        self._last = (self._t0, None)

    def restart_clock(self, step: int) -> None:
        self._last = (time.perf_counter(), step)

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (compilation, say) out of the next throughput figure."""
        t_last, s_last = self._last
        self._last = (t_last + seconds, s_last)

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        t_last, s_last = self._last
        rate = (step - s_last) / (now - t_last) if s_last is not None and now > t_last and step > s_last else float("nan")
        self._last = (now, step)
        return rate

    def line(self, step: int, loss: float, rate: float, errors: dict[str, float] | None, extra: str = "") -> None:
        if not self.enabled:
            return
        eta = (self.total - step) / rate if rate and math.isfinite(rate) and rate > 0 else float("nan")
        width = len(str(self.total))
        msg = f"[step {step:>{width}}/{self.total}] loss {loss:.3e}"
        if errors:
            msg += f" | rel L2 {errors['rel_l2']:.3e}"
        msg += f" | {rate:7.1f} steps/s | ETA {format_duration(eta)}"
        if extra:
            msg += f" | {extra}"
        print(msg, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


def write_results(
    path: Path,
    *,
    x: np.ndarray,
    prediction: np.ndarray,
    exact: np.ndarray | None,
    grid_shape: tuple[int, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    errors: dict[str, float],
    step: int,
) -> None:
    """Test-grid results, grid-shaped: x [*grid, dim], prediction/exact/error [*grid, n_out]."""
    shape = tuple(grid_shape)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(step=step, inputs=list(input_names), outputs=list(output_names), **errors)
        f.create_dataset("x", data=x.reshape(*shape, -1))
        f.create_dataset("prediction", data=prediction.reshape(*shape, -1))
        if exact is not None:
            f.create_dataset("exact", data=exact.reshape(*shape, -1))
            f.create_dataset("error", data=(prediction - exact).reshape(*shape, -1))
    tmp.replace(path)
