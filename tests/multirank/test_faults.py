"""Faults stop the whole job: a dead rank, a stuck rank, a NaN loss."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_equivalence import config
from ddpinn.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(cfg: dict, tmp_path: Path, n: int) -> list[subprocess.Popen]:
    """Start ``ddpinn train`` on n ranks with torchrun's variables but no supervising agent,
    so only ddpinn's own failure handling can stop the survivors."""
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    procs = []
    for rank in range(n):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(n),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "ddpinn.cli", "train", str(path)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def long_config(tmp_path: Path, timeout_s: float) -> dict:
    cfg = config("poisson2d", "float64")
    cfg["train"].update(steps=100000, checkpoint_every=20, log_every=20, eval_every=0)
    cfg["run"].update(output_dir=str(tmp_path), name="run")
    cfg["parallel"]["timeout_s"] = timeout_s
    return cfg


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_lost_rank_stops_the_job(tmp_path, how):
    """SIGKILL (the rank dies) or SIGSTOP (it hangs): the others exit non-zero within the
    timeout, and the last checkpoint stays readable."""
    timeout_s = 15.0
    procs = spawn_ranks(long_config(tmp_path, timeout_s), tmp_path, 2)
    ckpt = tmp_path / "run" / "checkpoint.h5"
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():
            assert time.monotonic() < deadline, "no checkpoint appeared"
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        victim = procs[1]
        victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        t0 = time.monotonic()
        out, err = procs[0].communicate(timeout=timeout_s + 60)
        elapsed = time.monotonic() - t0
        assert procs[0].returncode not in (0, None)
        assert elapsed <= timeout_s + 30, f"survivor took {elapsed:.0f} s to stop"
        assert "communication error" in err, err[-2000:]
        assert load_checkpoint(ckpt).step % 20 == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()


def test_nan_loss_stops_every_rank_with_a_report(tmp_path):
    problem = tmp_path / "bad_problem.py"
    problem.write_text(
        "import torch\n"
        "from dataclasses import dataclass\n"
        "from ddpinn.problems.library.poisson import Poisson2D\n"
        "@dataclass\n"
        "class BlowsUp(Poisson2D):\n"
        "    def residual(self, x, d):\n"
        "        # finite at first, NaN once u exceeds 10 somewhere\n"
        "        return super().residual(x, d) * torch.sqrt(10.0 - d['u'].abs().max())\n"
    )
    cfg = long_config(tmp_path, 30.0)
    cfg["problem"]["name"] = f"{problem}:BlowsUp"
    cfg["optimizer"] = {"lr": 0.5}
    cfg["train"].update(steps=400, checkpoint_every=1000)
    procs = spawn_ranks(cfg, tmp_path, 2)
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 3, err[-2000:]
        assert "non-finite loss at step" in err and "level" in err and "subdomain" in err, err[-2000:]
    assert not (tmp_path / "run" / "checkpoint.h5").exists()
