"""The failure channel between ranks, without a process group: several channel objects share an
in-memory store (or an in-memory MPI world), as the ranks of one job share the c10d store (or
MPI_COMM_WORLD). Also how the CLI reports and ends a rank after a failure on N ranks.
The multi-process behaviour under real launchers is in tests/multirank/test_faults.py."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ddpinn.parallel import failure
from ddpinn.parallel.backends import _ChannelComm
from ddpinn.parallel.comm import CommError
from ddpinn.parallel.failure import (
    MpiChannel,
    PeerFailedError,
    RankEnding,
    RankFailure,
    StoreChannel,
    ending_of,
    format_ranks,
    note_ending,
)


class MemoryStore:
    """The part of the c10d Store API the channel uses, in one dict (atomic operations, like
    the store server's)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def set(self, key: str, value: str | bytes) -> None:
        self.data[key] = value.encode() if isinstance(value, str) else value

    def get(self, key: str) -> bytes:
        return self.data[key]

    def add(self, key: str, amount: int) -> int:
        with self.lock:
            value = int(self.data.get(key, b"0")) + amount
            self.data[key] = str(value).encode()
            return value

    def append(self, key: str, value: str) -> None:
        with self.lock:
            self.data[key] = self.data.get(key, b"") + value.encode()

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)


class BrokenStore:
    def __getattr__(self, name):
        def fail(*args):
            raise RuntimeError("Connection refused")

        return fail


class MemoryMpiWorld:
    """mpi4py's COMM_WORLD for the channel's calls, one object per rank over shared queues."""

    ANY_SOURCE = -1

    class Status:
        source = -1

        def Get_source(self) -> int:
            return self.source

    def __init__(self, rank: int, size: int, queues: dict) -> None:
        self.rank, self.size, self.queues = rank, size, queues

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def isend(self, message, dest: int, tag: int):
        self.queues[(dest, tag)].append((self.rank, message))

    def iprobe(self, source: int, tag: int, status) -> bool:
        queue = self.queues[(self.rank, tag)]
        if queue:
            status.source = queue[0][0]
        return bool(queue)

    def recv(self, source: int, tag: int):
        return self.queues[(self.rank, tag)].pop(0)[1]


def store_channels(n: int) -> list[StoreChannel]:
    store = MemoryStore()
    return [StoreChannel(store, r, n, ("127.0.0.1", 1)) for r in range(n)]


def mpi_channels(n: int) -> list[MpiChannel]:
    queues: dict = defaultdict(list)
    return [MpiChannel(MemoryMpiWorld, MemoryMpiWorld(r, n, queues)) for r in range(n)]


BOOM = RankFailure(1, "ValueError", "boom")


@pytest.mark.parametrize("make", [store_channels, mpi_channels])
def test_a_posted_failure_reaches_every_rank_and_their_answers_come_back(make):
    ranks = make(4)
    assert all(c.poll("waiting in all_reduce #3") is None for c in ranks), "nothing posted yet"
    ranks[1].post(BOOM)
    assert ranks[0].poll("waiting in all_reduce #3") == BOOM
    assert ranks[2].poll("waiting in neighbour exchange #7") == BOOM
    # rank 3 never reads (stuck): it is missing from the answers
    assert ranks[1].await_answers(timeout_s=0.05) == {0: "waiting in all_reduce #3", 2: "waiting in neighbour exchange #7"}
    assert ranks[1].poll("x") is None, "a rank does not read its own failure"


@pytest.mark.parametrize("make", [store_channels, mpi_channels])
def test_ranks_failing_together_answer_each_other(make):
    ranks = make(2)
    same = RankFailure(0, "NonFiniteLossError", "non-finite loss at step 4")
    ranks[0].post(same)
    ranks[1].post(RankFailure(1, same.kind, same.message))
    with ThreadPoolExecutor(2) as pool:  # concurrently, as the ranks' processes would
        answers = list(pool.map(lambda c: c.await_answers(timeout_s=2.0), ranks))
    assert set(answers[0]) == {1} and set(answers[1]) == {0}
    assert answers[0][1].startswith("stopping with NonFiniteLossError")
    assert ranks[1].failures[0].same_error(ranks[0].posted)


def test_a_broken_store_reads_as_no_news_and_never_raises():
    channel = StoreChannel(BrokenStore(), 0, 2, ("127.0.0.1", 1))
    assert channel.poll("waiting") is None and channel.broken
    assert channel.announce(BOOM, timeout_s=0.01) == {}


def test_an_unreachable_store_host_is_not_read():
    channel = StoreChannel(BrokenStore(), 1, 2, ("127.0.0.1", 1))  # port 1: connection refused
    assert channel.await_failure("waiting", timeout_s=5.0) is None and channel.broken


def test_failure_round_trip_and_long_messages():
    assert RankFailure.decode(BOOM.encode()) == BOOM
    long = RankFailure.of(ValueError("x" * 5000), rank=3)
    assert long.rank == 3 and long.kind == "ValueError" and len(long.message) < 2100
    assert RankFailure.of(KeyboardInterrupt(), 0).headline == "KeyboardInterrupt"


@pytest.mark.parametrize("ranks,text", [([5], "rank 5"), ([1, 2, 3, 7], "ranks 1-3, 7"), ([4, 0, 2], "ranks 0, 2, 4")])
def test_format_ranks(ranks, text):
    assert format_ranks(ranks) == text


class ChannelOnlyComm(_ChannelComm):
    """A multi-process communicator reduced to its failure handling (no collectives)."""

    def __init__(self, channel, rank: int, world_size: int, timeout_s: float = 15.0) -> None:
        self.rank, self.world_size, self.channel = rank, world_size, channel
        self._init_failure_handling(timeout_s)

    def all_reduce_sum(self, tensor):
        raise NotImplementedError

    def exchange(self, sends, recv_shapes, dtype):
        raise NotImplementedError

    def allgather_object(self, obj):
        raise NotImplementedError


def test_the_lowest_rank_reports_an_error_that_several_ranks_raise():
    channels = store_channels(3)
    comms = [ChannelOnlyComm(c, r, 3) for r, c in enumerate(channels)]
    errors = [RuntimeError("non-finite loss at step 4"), RuntimeError("non-finite loss at step 4"), KeyError("x")]
    for comm, err in zip(comms, errors):
        comm.channel.post(RankFailure.of(err, comm.rank))
    for comm, err in zip(comms, errors):
        comm.report_failure(err)
    assert [ending_of(e).reports for e in errors] == [True, False, True]
    assert all(not ending_of(e).stopped_by_peer for e in errors)


def test_a_rank_stopped_by_a_peer_reports_only_on_rank_0():
    channels = store_channels(3)
    channels[2].post(RankFailure(2, "ValueError", "boom"))
    endings = []
    for rank in (0, 1):
        comm = ChannelOnlyComm(channels[rank], rank, 3)
        with pytest.raises(PeerFailedError, match=r"rank 2 failed with ValueError: boom \(noticed by rank \d in all_reduce #1\)") as info:
            comm._check_peers(comm._label("all_reduce"))
        comm.report_failure(info.value)
        endings.append(ending_of(info.value))
    assert [(e.reports, e.stopped_by_peer) for e in endings] == [(True, True), (False, True)]


def test_a_timeout_names_the_ranks_that_did_not_answer():
    channels = store_channels(4)
    comm = ChannelOnlyComm(channels[0], 0, 4, timeout_s=15)
    what = comm._label("all_reduce")
    # Rank 2 waits in the same all-reduce and answers; ranks 1 and 3 are stuck elsewhere.
    channels[0].post(RankFailure(0, "CommError", f"{what} timed out after 15 s"))
    channels[2].poll(f"waiting in {what}")
    err = comm._timed_out(what)
    assert str(err) == ("all_reduce #1 timed out after 15 s waiting for ranks 1, 3 "
                        "(no answer: stopped, stuck outside a collective, or dead)")


def test_a_timeout_names_a_rank_in_another_collective():
    channels = store_channels(3)
    comm = ChannelOnlyComm(channels[0], 0, 3)
    channels[0].post(RankFailure(0, "CommError", "neighbour exchange #5 timed out after 15 s"))
    channels[1].poll("waiting in all_reduce #9")
    channels[2].poll("waiting in neighbour exchange #5")
    err = comm._timed_out("neighbour exchange #5", waiting_for=[1])
    assert str(err) == "neighbour exchange #5 timed out after 15 s waiting for rank 1; rank 1 is waiting in all_reduce #9"


# ---------------------------------------------------------------- the CLI's side

@pytest.fixture
def ended(monkeypatch):
    """Record end_process instead of ending the test process."""
    calls = []
    monkeypatch.setattr(failure, "end_process", lambda status, ending: calls.append((status, ending)))
    return calls


def run_cli_raising(monkeypatch, err: BaseException) -> int:
    from ddpinn import cli

    def train(_args):
        raise err

    monkeypatch.setattr(cli, "_train", train)
    return cli.main(["train", "config.yaml"])


def raised(err: BaseException) -> BaseException:
    """``err`` with a traceback, as it reaches the CLI."""
    try:
        raise err
    except BaseException as caught:  # noqa: BLE001 - any exception, as the CLI gets it
        return caught


def test_cli_on_the_failing_rank_prints_the_rank_and_the_traceback(monkeypatch, capsys, ended):
    err = raised(ZeroDivisionError("division by zero"))
    note_ending(err, RankEnding(rank=1, world_size=4, reports=True, stopped_by_peer=False))
    run_cli_raising(monkeypatch, err)
    stderr = capsys.readouterr().err
    assert stderr.startswith("ddpinn: rank 1 of 4 failed with an unexpected error:\nTraceback")
    assert stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert ended == [(1, ending_of(err))]


@pytest.mark.parametrize("make_err,status,line", [
    (lambda: __import__("ddpinn.config", fromlist=["ConfigError"]).ConfigError("problem.params: bad"), 2,
     "ddpinn: error on rank 3 of 4: problem.params: bad"),
    (lambda: CommError("all_reduce #3 timed out after 15 s waiting for rank 1"), 4,
     "ddpinn: communication error on rank 3 of 4: all_reduce #3 timed out after 15 s waiting for rank 1"),
])
def test_cli_names_the_rank_of_a_known_error_and_keeps_its_status(monkeypatch, capsys, ended, make_err, status, line):
    err = make_err()
    note_ending(err, RankEnding(rank=3, world_size=4, reports=True, stopped_by_peer=False))
    run_cli_raising(monkeypatch, err)
    assert capsys.readouterr().err == line + "\n"
    assert ended[0][0] == status


@pytest.mark.parametrize("rank,printed", [(0, True), (2, False)])
def test_cli_stopped_by_a_peer_prints_one_line_on_rank_0_only(monkeypatch, capsys, ended, rank, printed):
    err = PeerFailedError(RankFailure(1, "ValueError", "boom"), rank, "all_reduce #12")
    note_ending(err, RankEnding(rank=rank, world_size=4, reports=rank == 0, stopped_by_peer=True))
    run_cli_raising(monkeypatch, err)
    expected = f"ddpinn: rank {rank} of 4 stopped: rank 1 failed with ValueError: boom (noticed by rank {rank} in all_reduce #12)\n"
    assert capsys.readouterr().err == (expected if printed else "")
    assert ended[0][0] == 4 and ended[0][1].stopped_by_peer


def test_cli_of_one_process_is_unchanged(monkeypatch, capsys, ended):
    from ddpinn.config import ConfigError

    assert run_cli_raising(monkeypatch, ConfigError("problem.name: unknown")) == 2
    assert capsys.readouterr().err == "ddpinn: error: problem.name: unknown\n"
    with pytest.raises(ZeroDivisionError):
        run_cli_raising(monkeypatch, ZeroDivisionError("x"))
    assert ended == []


def test_local_comm_has_nobody_to_tell():
    from ddpinn.parallel.comm import LocalComm

    err = ValueError("x")
    LocalComm().report_failure(err)
    assert ending_of(err) is None
    assert torch.equal(LocalComm().all_reduce_sum(torch.ones(2)), torch.ones(2))


class GpuWork:
    """A NCCL work as the polled wait sees it: complete after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.done_at = time.monotonic() + seconds

    def is_completed(self) -> bool:
        return time.monotonic() > self.done_at

    def wait(self) -> bool:
        return True


def test_the_polled_gpu_wait_completes_notices_a_peer_and_times_out():
    """TorchComm's wait for NCCL works (no GPU needed: only completion queries are polled)."""
    from ddpinn.parallel.backends import TorchComm

    channels = store_channels(2)
    comm = TorchComm.__new__(TorchComm)  # the wait only, without a process group
    comm.rank, comm.world_size, comm.channel = 0, 2, channels[0]
    comm._init_failure_handling(timeout_s=0.5)
    comm._await_cuda("all_reduce #1", [(None, GpuWork(0.05))], True)
    channels[1].post(BOOM)
    start = time.monotonic()
    with pytest.raises(PeerFailedError, match="rank 1 failed with ValueError: boom"):
        comm._await_cuda("all_reduce #2", [(None, GpuWork(100))], True)
    assert time.monotonic() - start < 0.2
    comm.channel = store_channels(2)[0]
    with pytest.raises(CommError, match=r"all_reduce #3 timed out after 0.5 s waiting for rank 1 \(no answer"):
        comm._await_cuda("all_reduce #3", [(None, GpuWork(100))], True)
