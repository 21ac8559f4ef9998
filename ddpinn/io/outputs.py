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
from typing import Any, Self, TextIO

import h5py
import numpy as np

__all__ = ["MetricsLog", "Progress", "ResultsWriter", "read_metrics", "format_duration"]


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
            per_output = [f"{k[len('rel_l2_'):]} {v:.3e}" for k, v in errors.items() if k.startswith("rel_l2_")]
            if per_output:
                msg += f" ({', '.join(per_output)})"
        msg += f" | {rate:7.1f} steps/s | ETA {format_duration(eta)}"
        if extra:
            msg += f" | {extra}"
        print(msg, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


class ResultsWriter:
    """``results.h5`` written piece by piece: grid-shaped datasets x [*grid, dim] and prediction,
    exact, error [*grid, n_out] (float64; exact and error only with an exact solution), the
    errors and step as attributes. Each :meth:`write` fills one box of the grid (a hyperslab),
    so the whole grid is never in memory. Written to a temporary file that replaces ``path``
    when the writer closes without an error (a failed write leaves the old results)."""

    def __init__(
        self,
        path: Path,
        *,
        grid_shape: tuple[int, ...],
        n_out: int,
        has_exact: bool,
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        errors: dict[str, float],
        step: int,
    ) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        shape = tuple(grid_shape)
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs.update(step=step, inputs=list(input_names), outputs=list(output_names), **errors)
        names = ["prediction", "exact", "error"] if has_exact else ["prediction"]
        self.x = self.file.create_dataset("x", shape=(*shape, len(shape)), dtype=np.float64)
        self.fields = {n: self.file.create_dataset(n, shape=(*shape, n_out), dtype=np.float64) for n in names}

    def write(self, box: tuple[slice, ...], x: np.ndarray, prediction: np.ndarray, exact: np.ndarray | None) -> None:
        """The points of the grid box ``box`` (one slice per axis, box shape ``s``): ``x`` [prod(s), dim]
        and ``prediction``, ``exact`` [prod(s), n_out], in C order over the box."""
        shape = tuple(b.stop - b.start for b in box)
        self.x[box] = x.reshape(*shape, -1)
        self.fields["prediction"][box] = prediction.reshape(*shape, -1)
        if "exact" in self.fields:
            self.fields["exact"][box] = exact.reshape(*shape, -1)
            self.fields["error"][box] = (prediction - exact).reshape(*shape, -1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.file.close()
        if kind is None:
            self.tmp.replace(self.path)
