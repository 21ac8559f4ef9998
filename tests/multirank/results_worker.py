"""Run under a launcher by ``test_results_streaming.py``: train, counting the object collectives
of the final write on every rank.

    python results_worker.py train CONFIG_JSON OUT_DIR

Trains into OUT_DIR/run/ and writes OUT_DIR/calls_rank<r>.json: the rank's ``allgather_object``
and ``gather_object`` calls while it wrote the final outputs, how many of the gathers handed it
the pieces (rank 0 only), and its own non-empty test chunks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.session import make_layout, open_session
from ddpinn.train import trainer as trainer_module
from ddpinn.train.trainer import Trainer


def counting_final_write(out_dir: Path):
    """``write_final_outputs`` that counts the communicator's object collectives while it runs."""
    write = trainer_module.write_final_outputs

    def wrapped(run_dir, exp, comm, test, *args):
        calls = {"allgather_object": 0, "gather_object": 0, "gathers_received": 0}
        allgather, gather = comm.allgather_object, comm.gather_object

        def counted_allgather(obj):
            calls["allgather_object"] += 1
            return allgather(obj)

        def counted_gather(obj, root=0):
            calls["gather_object"] += 1
            pieces = gather(obj, root)
            calls["gathers_received"] += pieces is not None
            return pieces

        comm.allgather_object, comm.gather_object = counted_allgather, counted_gather
        try:
            write(run_dir, exp, comm, test, *args)
        finally:
            comm.allgather_object, comm.gather_object = allgather, gather
        calls["own_chunks"] = sum(c.box.n_points > 0 for c in test.chunks)
        (out_dir / f"calls_rank{comm.rank}.json").write_text(json.dumps(calls))

    return wrapped


def main() -> None:
    config_json, out_dir = sys.argv[2], Path(sys.argv[3])
    data = json.loads(Path(config_json).read_text())
    data.setdefault("run", {}).update(output_dir=str(out_dir), name="run")
    cfg = load_config(data=data)
    exp = build_experiment(cfg)
    trainer_module.write_final_outputs = counting_final_write(out_dir)
    with open_session(cfg) as session:
        layout = make_layout(exp, session.comm.world_size)
        trainer = Trainer(exp, comm=session.comm, layout=layout, device=session.device, run_dir=cfg.run_dir, quiet=True)
        trainer.train()


if __name__ == "__main__":
    main()
