"""The torch.distributed neighbour exchange is one ``batch_isend_irecv`` per exchange.

Ungrouped ``isend``/``irecv`` can deadlock under NCCL (each op runs in turn on the stream), so
:meth:`TorchComm.exchange` must hand every message of an exchange to one batch. This cannot be
seen from the results on gloo (ungrouped ops work there), so the 2-rank run below spies on
torch.distributed: it counts the batches and records whether any ``isend``/``irecv`` was issued
outside one. The op list itself is checked without a process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ddpinn.parallel.backends import p2p_ops, resolve_comm, torch_backend
from ddpinn.parallel.comm import CommError
from ddpinn.parallel.env import DistEnv, LaunchMethod

from .harness import free_port, scaled

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from ddpinn.parallel.backends import TorchComm
    from ddpinn.parallel.env import detect_env

    in_batch = [False]
    batches, ungrouped = [], []
    real_batch, real_isend, real_irecv = dist.batch_isend_irecv, dist.isend, dist.irecv

    def batch(ops):
        in_batch[0] = True
        try:
            batches.append([(op.op.__name__, op.peer, op.tensor.numel()) for op in ops])
            return real_batch(ops)
        finally:
            in_batch[0] = False

    def spy(real):
        def op(*args, **kwargs):
            if not in_batch[0]:
                ungrouped.append(real.__name__)
            return real(*args, **kwargs)
        op.__name__ = real.__name__
        return op

    # P2POp accepts only the module's own isend/irecv: patch them where it looks, too.
    import torch.distributed.distributed_c10d as c10d
    dist.batch_isend_irecv = batch
    dist.isend = c10d.isend = spy(real_isend)
    dist.irecv = c10d.irecv = spy(real_irecv)
    env = detect_env("env")
    comm = TorchComm(env, torch.device("cpu"), timeout_s=60)
    other = 1 - comm.rank
    exchanged = []
    # A full exchange, one with a zero-size message one way, and one with nothing to send.
    for n_out, n_in in ([3 + comm.rank, 3 + other], [0 if comm.rank else 2, 2 if comm.rank else 0], [0, 0]):
        send = torch.arange(n_out, dtype=torch.float64) + 100 * comm.rank
        got = comm.exchange({other: send}, {other: (n_in,)}, torch.float64)
        exchanged.append(got[other].tolist())
    comm.close()
    with open(sys.argv[1] + f"/rank{comm.rank}.json", "w") as f:
        json.dump({"batches": batches, "ungrouped": ungrouped, "exchanged": exchanged}, f)
    """
)


@pytest.mark.distributed
def test_each_exchange_is_one_batch_and_no_op_is_ungrouped(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(120), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        other = 1 - rank
        assert out["ungrouped"] == [], "an isend/irecv was issued outside batch_isend_irecv"
        # The third exchange has nothing to move: no batch at all (batch_isend_irecv([]) raises).
        assert len(out["batches"]) == 2, out["batches"]
        full, one_way = out["batches"]
        assert sorted(full) == sorted([["irecv", other, 3 + other], ["isend", other, 3 + rank]])
        assert one_way == ([["isend", other, 2]] if rank == 0 else [["irecv", other, 2]])
        sent_by_other = [100.0 * other + i for i in range(3 + other)]
        assert out["exchanged"] == [sent_by_other, [100.0 * other + i for i in range(2)] if rank else [], []]


class _FakeDist:
    """Enough of torch.distributed to build P2POps without a process group."""

    @staticmethod
    def isend(tensor, peer):
        raise AssertionError("an op is only built, never run")

    @staticmethod
    def irecv(tensor, peer):
        raise AssertionError("an op is only built, never run")

    P2POp = staticmethod(lambda op, tensor, peer: (op.__name__, peer, tensor.numel()))


def test_the_op_list_holds_every_non_empty_message_once():
    receives = {3: torch.empty(4), 1: torch.empty(0), 2: torch.empty(1)}
    sends = {2: torch.ones(5), 3: torch.ones(0), 1: torch.ones(2)}
    ops = p2p_ops(_FakeDist, 0, receives, sends)
    assert [peer for peer, _ in ops] == [2, 3, 1, 2]
    assert [op for _, op in ops] == [("irecv", 2, 1), ("irecv", 3, 4), ("isend", 1, 2), ("isend", 2, 5)]


def test_the_op_list_refuses_this_rank_as_its_own_neighbour():
    with pytest.raises(CommError, match="rank 1: a neighbour exchange listed this rank as its own neighbour"):
        p2p_ops(_FakeDist, 1, {1: torch.empty(2)}, {})


@pytest.mark.parametrize("comm,device,backend", [
    ("torch", "cpu", "gloo"), ("torch", "cuda", "nccl"), ("gloo", "cuda", "gloo"), ("gloo", "cpu", "gloo"),
])
def test_the_backend_follows_comm_and_device(comm, device, backend):
    assert torch_backend(comm, torch.device(device)) == backend


def test_gloo_is_kept_by_resolve_comm():
    env = DistEnv(0, 2, 0, 2, LaunchMethod.MPI)
    assert resolve_comm("gloo", env, torch.device("cuda")) == "gloo"
    assert resolve_comm("auto", env, torch.device("cuda")) == "torch"
