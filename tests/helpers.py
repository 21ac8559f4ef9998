"""Plain helper functions shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import torch
import yaml

from ddpinn.geometry import CosineWindow, LevelCoverage, Window
from ddpinn.jets import JetSpec


def full_spec(dim: int, order: int) -> JetSpec:
    """Every multi-index of order <= ``order``."""
    wanted = [idx for k in range(1, order + 1) for idx in itertools.combinations_with_replacement(range(dim), k)]
    return JetSpec.closure(dim, wanted)


def write_yaml(path: Path, data: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dense_jets(cov: LevelCoverage, n_points: int, n_subdomains: int) -> torch.Tensor:
    """[n_points, n_subdomains, J] normalised window jets (zero where a subdomain does not cover)."""
    n_jets = cov.window.shape[1]
    out = torch.zeros(n_points + 1, n_subdomains, n_jets, dtype=cov.window.dtype)
    for s, sid in enumerate(cov.subdomain_ids.tolist()):
        out[cov.point_index[s], sid] = cov.window[s].T  # padding lands in the dummy row n_points
    return out[:n_points]


def autodiff_jets(fn, x: torch.Tensor, spec: JetSpec) -> torch.Tensor:
    """Jets of a point-wise ``fn`` ([n, dim] -> [n, n_out]) by forward-mode autodiff (torch.func),
    independent of ddpinn's own jet code: [n, J, n_out]."""
    from torch.func import jacfwd, vmap

    def single(p):  # [dim] -> [n_out]
        return fn(p[None]).reshape(-1)

    nested = [single]
    for _ in range(spec.max_order):
        nested.append(jacfwd(nested[-1]))
    by_order = [vmap(f)(x) for f in nested]  # order k: [n, n_out, dim, ..., dim]
    rows = [by_order[len(idx)][(slice(None), slice(None), *idx)] for idx in spec.indices]
    return torch.stack(rows, dim=1)


def reference_profile(window: Window, t: torch.Tensor) -> torch.Tensor:
    """The 1-D window profile written from its formula (zero for |t| >= 1), for references."""
    inside = (t.abs() < 1).to(t.dtype)
    if isinstance(window, CosineWindow):
        return ((1 + torch.cos(math.pi * t)) / 2) ** 2 * inside
    r = window.core
    s = (1 - r) / math.log(1 / window.edge_value)
    return torch.sigmoid((t + r) / s) * torch.sigmoid((r - t) / s) * inside


def small_experiment(levels=3, method="grid", n=(40, 40), policy="auto", problem="poisson2d", **extra):
    """An :class:`~ddpinn.build.Experiment` from a few config fields: ``n`` points per axis on a
    grid, or their product for the random methods."""
    import numpy as np

    from ddpinn.build import build_experiment
    from ddpinn.config import load_config

    data = {
        "problem": {"name": problem},
        "decomposition": {"levels": levels},
        "sampling": {"method": method, "n": list(n) if method == "grid" else int(np.prod(n))},
        "parallel": {"level_policy": policy},
        **extra,
    }
    return build_experiment(load_config(data=data))


def snapshot_at(monkeypatch, step: int, target: Path) -> None:
    """Copy the run directory to ``target`` right after the trainer writes the checkpoint of
    ``step`` (the state a crash just after it would leave)."""
    from ddpinn.train.trainer import Trainer

    original = Trainer.save

    def save(self, at_step):
        original(self, at_step)
        if at_step == step:
            shutil.copytree(self.run_dir, target)

    monkeypatch.setattr(Trainer, "save", save)
