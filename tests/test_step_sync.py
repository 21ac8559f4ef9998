"""An Adam training step reads nothing back to the host, and sends nothing made there.

On a GPU, every ``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()`` or ``.numpy()``
of a device tensor makes the host wait for the device. On the CPU they cost nothing, so they are
counted instead: each of those Tensor methods is wrapped, and ``aten._local_scalar_dense`` (where
``item``, ``float``, ``bool`` and ``int`` of a tensor end up) is watched by a dispatch mode,
while the trainer takes Adam steps that are not logging, evaluation or checkpoint steps. The same
mode counts ``aten.lift_fresh``: a tensor made from Python data (``torch.tensor(x)``,
``torch.as_tensor(x)``), which on a GPU is a host-to-device copy every step.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.parallel.comm import LocalComm
from ddpinn.session import make_layout
from ddpinn.train.trainer import Trainer

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

CASES = {
    "poisson2d, fixed weights, clipping": {
        "problem": {"name": "poisson2d", "params": {"frequencies": [2.0, 4.0]}},
        "decomposition": {"levels": 2},
        "sampling": {"method": "uniform", "n": 200, "test_n": [10, 10]},
        "optimizer": {"clip_norm": 1.0},
    },
    "burgers, self-adaptive x causal weights": {
        "problem": {"name": "burgers"},
        "decomposition": {"levels": [{"subdomains": [1, 1]}, {"subdomains": [3, 2]}]},
        "sampling": {"method": "sobol", "n": 128, "test_n": [10, 10]},
        "loss": {"weighting": "self_adaptive", "causal": {"enabled": True, "axis": "t", "chunks": 4}},
    },
}


class _ScalarReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.from_host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        if func is torch.ops.aten.lift_fresh.default:
            self.from_host += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", list(CASES))
def test_an_adam_step_reads_nothing_back(tmp_path, monkeypatch, case):
    data = {**CASES[case], "train": {"steps": 50, "log_every": 50, "eval_every": 0, "compile": "off"},
            "network": {"hidden": [8]},
            "run": {"output_dir": str(tmp_path), "name": "run", "threads": 1, "plots": False}}
    cfg = load_config(data=data)
    exp = build_experiment(cfg)
    trainer = Trainer(exp, comm=LocalComm(), layout=make_layout(exp, 1), device=torch.device("cpu"),
                      run_dir=cfg.run_dir, quiet=True)
    trainer.points.start(0, None)
    batch = trainer.points.batch
    trainer.train_step(0, batch)  # the first step builds lazily (optimiser state)
    reads: list[str] = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, _real=real, _name=name, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    with _ScalarReads() as scalars:
        for step in range(1, 4):
            trainer.train_step(step, batch)
    monkeypatch.undo()
    assert reads == [] and scalars.count == 0, f"host reads in an Adam step: {reads}, {scalars.count} scalar reads"
    assert scalars.from_host == 0, f"{scalars.from_host} tensors made from host data in 3 Adam steps"
