"""The end of a run: ``summary.json``, ``results.h5`` on the test grid, and the plots.

Defines :func:`write_final_outputs`. The test grid is predicted chunk by chunk on every rank
(:func:`~ddpinn.train.evaluation.predict_test_set`); after each chunk the ranks' pieces are
gathered to rank 0 only, which writes each into its box of the grid-shaped datasets. Rank 0
thus holds one chunk per rank at a time, never the whole grid.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpinn.io.outputs import ResultsWriter
from ddpinn.parallel.batching import TestSet
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.grid_chunks import GridBox
from ddpinn.train.evaluation import Predict, TestErrors, predict_test_set

__all__ = ["write_final_outputs"]


@dataclass(frozen=True)
class ResultPiece:
    """One rank's chunk as sent to rank 0: its grid box, ``prediction`` and ``exact``
    [box points, n_out] float64 (exact None without an exact solution). The coordinates are not
    sent: rank 0 computes them from the box."""

    box: GridBox
    prediction: np.ndarray
    exact: np.ndarray | None


def write_final_outputs(run_dir: Path, exp, comm: Communicator, test: TestSet, predict: Predict,
                        errors: TestErrors | None, summary: dict, message) -> None:
    """A collective. ``predict``: the model on a test batch (see :func:`predict_test_set`);
    ``summary``: what ``summary.json`` records besides the errors; ``message(text)``: a
    progress line. Only rank 0 writes."""
    results = contextlib.nullcontext()
    if comm.rank == 0:
        summary = {**summary, "errors": errors.as_dict() if errors else None}
        (run_dir / "summary.json").write_text(json.dumps(_finite_or_null(summary), indent=2) + "\n")
        results = ResultsWriter(
            run_dir / "results.h5",
            grid_shape=exp.test_shape(),
            n_out=len(exp.problem.outputs),
            has_exact=test.has_exact,
            input_names=exp.problem.inputs,
            output_names=exp.problem.outputs,
            errors=errors.as_dict() if errors else {},
            step=summary["step"],
        )
    with results as writer:
        for chunk, prediction in predict_test_set(test, predict):
            exact = None if chunk.exact is None else chunk.exact.numpy()
            pieces = comm.gather_object(ResultPiece(chunk.box, prediction.detach().double().cpu().numpy(), exact), root=0)
            if writer is None:  # not rank 0
                continue
            for piece in pieces:
                if piece.box.n_points:
                    writer.write(piece.box.slices, test.grid.points(piece.box), piece.prediction, piece.exact)
    if comm.rank == 0 and exp.cfg.run.plots:
        from ddpinn.io.plots import plot_run

        for path in plot_run(run_dir):
            message(f"  wrote {path}")


def _finite_or_null(value):
    """JSON has no NaN or infinity: write null for them."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return value
