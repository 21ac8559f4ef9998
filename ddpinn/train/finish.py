"""The end of a run: ``summary.json``, ``results.h5`` on the test grid, and the plots.

Defines :func:`write_final_outputs`. Every rank's test-grid rows are gathered to rank 0, which
puts them in grid order and writes the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpinn.io.outputs import write_results
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.batching import TestSet
from ddpinn.train.evaluation import TestErrors

__all__ = ["write_final_outputs"]


def write_final_outputs(run_dir: Path, exp, comm: Communicator, test: TestSet, prediction: np.ndarray,
                        errors: TestErrors | None, summary: dict, message) -> None:
    """``prediction``: [n_own_test, n_out] at this rank's test points; ``summary``: what
    ``summary.json`` records besides the errors; ``message(text)``: a progress line."""
    gathered = comm.allgather_object((test.x, prediction, None if test.exact is None else test.exact.numpy()))
    if comm.rank != 0:
        return
    summary = {**summary, "errors": errors.as_dict() if errors else None}
    (run_dir / "summary.json").write_text(json.dumps(_finite_or_null(summary), indent=2) + "\n")
    x, prediction, exact = _assemble_grid(gathered, exp.decomposition.domain, exp.test_shape())
    write_results(
        run_dir / "results.h5",
        x=x,
        prediction=prediction,
        exact=exact,
        grid_shape=exp.test_shape(),
        input_names=exp.problem.inputs,
        output_names=exp.problem.outputs,
        errors=errors.as_dict() if errors else {},
        step=summary["step"],
    )
    if exp.cfg.run.plots:
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


def _assemble_grid(parts, domain, shape: tuple[int, ...]):
    """Put every rank's (x, prediction, exact) rows into C-order grid positions."""
    x = np.concatenate([p[0] for p in parts])
    prediction = np.concatenate([p[1] for p in parts])
    exact = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    axes = [np.linspace(domain.lo[a], domain.hi[a], n) if n > 1 else np.array([(domain.lo[a] + domain.hi[a]) / 2])
            for a, n in enumerate(shape)]
    # Test points are the same linspace values as ``axes``, so searchsorted finds them exactly.
    index = tuple(np.clip(np.searchsorted(axes[a], x[:, a]), 0, n - 1) for a, n in enumerate(shape))
    order = np.argsort(np.ravel_multi_index(index, shape), kind="stable")
    return x[order], prediction[order], None if exact is None else exact[order]
