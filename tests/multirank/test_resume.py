"""A checkpoint written by 4 ranks resumes on 2 and on 1 rank and continues exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ddpinn.train.checkpoint import load_checkpoint

from .harness import launch, rel_diff
from .test_equivalence import config

pytestmark = pytest.mark.distributed


def params(run_dir, name="checkpoint.h5"):
    checkpoint = load_checkpoint(run_dir / name)
    return checkpoint.arrays, checkpoint.step, checkpoint.world_size


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_four_ranks_on_two_and_one(tmp_path):
    cfg = config("poisson2d", "float64")
    cfg["sampling"]["resample_every"] = 3  # resampling epochs must line up after the restart
    full = dict(cfg, train={**cfg["train"], "steps": 8, "eval_every": 8})
    half = dict(cfg, train={**cfg["train"], "steps": 4, "eval_every": 8})

    launch(1, "train", full, tmp_path / "uninterrupted")
    launch(4, "train", half, tmp_path / "four")
    for n in (2, 1):
        target = tmp_path / f"resumed{n}"
        shutil.copytree(tmp_path / "four", target)
        launch(n, "train", full, target)
        ref, step_ref, _ = params(tmp_path / "uninterrupted" / "run")
        got, step, written_by = params(target / "run")
        assert step == step_ref == 8 and written_by == n
        assert params(target / "run", "checkpoint.prev.h5")[1:] == (4, 4)  # the 4-rank checkpoint, kept
        for key in ref:
            assert rel_diff(ref[key], got[key]) <= 1e-10, f"{key} differs after resuming on {n} rank(s)"
        np.testing.assert_allclose(losses(target / "run"), losses(tmp_path / "uninterrupted" / "run"), rtol=1e-10)
