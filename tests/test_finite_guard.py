"""The asynchronous finiteness check: no non-finite Adam step reaches the parameters or the
optimiser state, and the run still stops with the first bad step named.

Adam's check is a device flag that the fused kernel reads (no host synchronisation per step); the
trainer reads it only at its logging, evaluation and checkpoint steps. A problem whose residual
turns NaN from a chosen step on shows that the parameters and Adam's state at the error are those
of the last finite step, exactly, and that the checkpoint written before is intact.
"""

from __future__ import annotations

import pytest
import torch

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.parallel.comm import LocalComm
from ddpinn.session import make_layout
from ddpinn.train import checkpoint as ckpt_io
from ddpinn.train.diagnose import FiniteGuard, NonFiniteLossError
from ddpinn.train.trainer import Trainer

NAN_FROM_CALL = """
from dataclasses import dataclass
from ddpinn.problems.library.cos1d import Cos1D

@dataclass
class NanLater(Cos1D):
    '''Cos1D whose residual is NaN from training step {bad} on (one evaluation per step).'''
    def residual(self, x, d):
        self.calls = getattr(self, "calls", 0) + 1
        r = super().residual(x, d)
        # Call 1 is the registry's dry run of the problem, before training.
        return r * float("nan") if self.calls > {bad} else r
"""


def trainer_for(tmp_path, small_run, name: str, steps: int, bad_step: int) -> Trainer:
    (tmp_path / "nan_later.py").write_text(NAN_FROM_CALL.format(bad=bad_step))
    data = small_run(problem={"name": f"{tmp_path / 'nan_later.py'}:NanLater", "params": {"omega": 15.0}},
                     train={"steps": steps, "log_every": 10, "eval_every": 0, "checkpoint_every": 3, "compile": "off"})
    data["run"]["name"] = name
    cfg = load_config(data=data)
    exp = build_experiment(cfg)
    return Trainer(exp, comm=LocalComm(), layout=make_layout(exp, 1), device=torch.device("cpu"), run_dir=cfg.run_dir,
                   quiet=True)


def adam_state(trainer: Trainer) -> list[torch.Tensor]:
    opt = trainer.phases.adam.optimizer
    return [t.clone() for p in trainer.sync.params for t in (p.detach(), *opt.state[p].values())]


def test_a_nan_step_leaves_parameters_adam_state_and_checkpoint_as_before_it(tmp_path, small_run):
    clean = trainer_for(tmp_path, small_run, "clean", steps=7, bad_step=8)
    clean.train()
    broken = trainer_for(tmp_path, small_run, "broken", steps=20, bad_step=8)
    with pytest.raises(NonFiniteLossError) as info:
        broken.train()
    message = str(info.value)
    # Step 8 is NaN; the flag is read at the next checkpoint step, 9.
    assert "non-finite loss at step 8 in term(s) ['pde']" in message
    assert "read at step 9" in message and "steps 8..9 made no update" in message
    assert "is from before this step" in message
    expected, got = adam_state(clean), adam_state(broken)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(expected, got)), \
        "a skipped step changed a parameter, a moment or Adam's step count"
    assert int(broken.phases.adam.optimizer.state[broken.sync.params[0]]["step"]) == 7
    saved = ckpt_io.load_checkpoint(broken.run_dir / "checkpoint.h5")
    assert saved.step == 6


def test_the_flag_is_sticky_and_records_the_first_bad_step():
    guard = FiniteGuard(model=None, objective=None, comm=LocalComm(), checkpoint_path=None)
    finite, bad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("inf")])
    flags = [float(guard.watch(t, step)) for step, t in enumerate([finite, finite, bad, finite, bad], start=1)]
    assert flags == [0, 0, 1, 1, 1]
    assert int(guard._first_step) == 3 and torch.equal(guard._first_terms, bad)


def test_nothing_is_read_before_anything_was_watched():
    FiniteGuard(model=None, objective=None, comm=LocalComm(), checkpoint_path=None).raise_if_tripped(5, batch=None)
