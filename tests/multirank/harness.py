"""Launch the worker on N ranks through a real launcher and compare results.

Wall-clock limits of the multirank tests are a base figure times :func:`timeout_scale`, which
follows the machine's load: several ranks on a few shared cores run several times slower.
Set ``DDPINN_TEST_TIMEOUT_SCALE`` (a number) to fix the factor instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


def timeout_scale() -> float:
    """``DDPINN_TEST_TIMEOUT_SCALE`` if set, else max(1, load average / cores): the factor by
    which a test's time limits grow on a loaded machine."""
    override = os.environ.get("DDPINN_TEST_TIMEOUT_SCALE")
    if override:
        return float(override)
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def scaled(seconds: float) -> float:
    """A time limit of ``seconds`` on an idle machine, scaled by :func:`timeout_scale`."""
    return seconds * timeout_scale()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mpiexec() -> str | None:
    local = Path(sys.executable).with_name("mpiexec")
    return str(local) if local.exists() else shutil.which("mpiexec")


def launch(
    n: int, mode: str, config: dict, out: Path, launcher: str = "torchrun", timeout: float | None = None, extra_env=None,
    worker: Path = WORKER,
) -> subprocess.CompletedProcess:
    """Run ``worker`` (``worker.py`` by default) on ``n`` ranks (``torchrun``, ``mpiexec`` or,
    for n = 1, plain python), within ``timeout`` seconds (default 240 s, scaled by the machine's load)."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config))
    args = [str(worker), mode, str(config_path), str(out)]
    if n == 1:
        cmd = [sys.executable, *args]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args]
    elif launcher == "mpiexec":
        cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    else:
        raise ValueError(launcher)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or scaled(240), env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def rel_diff(a, b) -> float:
    """Norm-wise relative difference ‖a − b‖₂ / ‖a‖₂ of two arrays."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))
