"""Run under torchrun, mpiexec or plain python by the distributed tests.

    python worker.py MODE CONFIG_JSON OUT_DIR

MODE ``equivalence``: rank 0 writes OUT_DIR/grads.npz with the global loss terms and every
subdomain's gradient at step 0 (keyed like checkpoint arrays, rows = global ids), then the run
trains ``train.steps`` steps and writes its checkpoint under OUT_DIR/run/.
MODE ``adjoint``: writes OUT_DIR/adjoint.pkl, every rank's random x and y, the halo exchange's
A x, Aᵀy through autograd and through the adjoint operator, and the rank's exchange plan rows.
MODE ``train``: trains (resuming if OUT_DIR/run/checkpoint.h5 exists), like ``ddpinn train``.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.session import make_layout, open_session
from ddpinn.train.trainer import Trainer


def gather_gradients(trainer, layout, comm) -> dict[str, np.ndarray]:
    rows = {}
    for level, net in enumerate(trainer.model.nets):
        if not (layout.is_partitioned(level) or comm.rank == 0):
            continue
        for name, p in net.checkpoint_tensors()[0]:  # the trained tensors, by checkpoint name
            grad = p.grad if p.grad is not None else torch.zeros_like(p)  # a rank whose subdomains a schedule has off
            rows[f"level_{level + 1}/{name}"] = (trainer.model.held[level], grad.detach().cpu().double().numpy())
    if comm.rank == 0:
        for name, p in trainer.trainables.named_values():
            rows[f"problem/{name}"] = (np.zeros(1, dtype=np.int64), p.grad.detach().cpu().double().numpy().reshape(1))
    merged: dict[str, list] = {}
    for part in comm.allgather_object(rows):
        for key, piece in part.items():
            merged.setdefault(key, []).append(piece)
    out = {}
    for key, pieces in merged.items():
        ids = np.concatenate([i for i, _ in pieces])
        values = np.concatenate([v for _, v in pieces])
        out[key] = values[np.argsort(ids)]
    return out


def main() -> None:
    mode, config_json, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    data = json.loads(Path(config_json).read_text())
    data.setdefault("run", {}).update(output_dir=str(out_dir), name="run")
    cfg = load_config(data=data)
    exp = build_experiment(cfg)
    with open_session(cfg) as session:
        comm, device = session.comm, session.device
        layout = make_layout(exp, comm.world_size)
        trainer = Trainer(exp, comm=comm, layout=layout, device=device, run_dir=cfg.run_dir, quiet=True)
        if mode == "equivalence":
            trainer.points.start(0, None)
            terms = trainer.engine.loss_and_gradients(trainer.points.batch, 0).terms
            grads = gather_gradients(trainer, layout, comm)
            if comm.rank == 0:
                out_dir.mkdir(parents=True, exist_ok=True)
                np.savez(out_dir / "grads.npz", terms=terms.double().cpu().numpy(), **grads)
            trainer.train()
        elif mode == "adjoint":
            from ddpinn.parallel.exchange.op import halo_exchange, halo_exchange_adjoint

            trainer.points.start(0, None)
            plan = trainer.points.batch.exchange
            gen = torch.Generator().manual_seed(100 + comm.rank)
            x = torch.randn(plan.n_eval, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
            y = torch.randn(plan.n_own, 3, 2, generator=gen, dtype=torch.float64)
            ax = halo_exchange(x, plan, comm)
            (ax * y).sum().backward()  # x.grad = Aᵀy through autograd
            part = {
                "x": x.detach().numpy(), "y": y.numpy(), "ax": ax.detach().numpy(), "autograd_aty": x.grad.numpy(),
                "adjoint_op_aty": halo_exchange_adjoint(y, plan, comm).numpy(),
                "halo_rows": {q: r.cpu().numpy() for q, r in plan.halo_rows.items()},
                "owned_rows": {q: r.cpu().numpy() for q, r in plan.owned_rows.items()},
            }
            parts = comm.allgather_object(part)
            if comm.rank == 0:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "adjoint.pkl").write_bytes(pickle.dumps(parts))
        elif mode == "train":
            trainer.train(resume=(cfg.run_dir / "checkpoint.h5").exists())
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
