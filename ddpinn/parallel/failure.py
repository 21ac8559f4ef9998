"""What a rank that stops tells the others, and how a job of N ranks ends after a failure.

A rank that raises (a residual that fails, a non-finite loss, a config error met on one rank
only) must not leave the others waiting in a collective until ``parallel.timeout_s``, and the
user must see which rank failed and why. Each multi-process communicator therefore keeps a
:class:`FailureChannel` beside its collectives:

* the failing rank posts a :class:`RankFailure` (its rank, the exception's type and message)
  and waits ``REPORT_WAIT_S`` for answers, long enough to learn whether lower ranks failed
  with the same error (then it stays silent);
* a rank waiting in a collective reads the channel once the wait has outlasted a short spin
  (a healthy step never touches it), or once a connection to the failed rank breaks; it
  answers with what it is doing and raises :class:`PeerFailedError`;
* a rank whose collective timed out or broke posts that the same way and waits
  ``ACK_WAIT_S``: the ranks that do not answer (stopped, stuck outside a collective, or dead)
  are the ones it names.

Two transports: :class:`StoreChannel` (keys in the c10d store that torch.distributed's process
group was formed on) and :class:`MpiChannel` (messages on a dedicated MPI tag).

How each rank then ends is noted on the exception by the session (:func:`note_ending`) and
carried out by the CLI: the failing rank prints the original exception, rank 0 prints one line
naming the failing rank, a rank whose error a lower rank reports identically stays silent, and
every process ends through :func:`end_process`. Launchers end the whole job as soon as one rank
exits (mpiexec at once, torchrun within its monitor interval) and report that rank's exit
status, so a rank stopped by a peer's failure waits ``PEER_EXIT_DELAY_S`` before exiting: the
failing rank's report and status are the ones that reach the user.

Used by :mod:`ddpinn.parallel.backends`, :mod:`ddpinn.session` and :mod:`ddpinn.cli`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from ddpinn.parallel.comm import CommError

__all__ = [
    "RankFailure", "PeerFailedError", "FailureChannel", "StoreChannel", "MpiChannel",
    "RankEnding", "note_ending", "ending_of", "end_process", "format_ranks",
]

ACK_WAIT_S = 2.0
"""How long a rank whose collective timed out or broke waits for the others to answer its
report (s); the ranks that do not answer are named as the ones it waited for."""
REPORT_WAIT_S = 0.3
"""How long a rank that raised waits for the others to answer before it reports (s): enough for
ranks that raised the same error in the same step (a non-finite global loss) to post theirs,
so that the lowest of them reports it alone."""
REASON_WAIT_S = 1.0
"""How long a rank whose connection to a peer broke waits for a report that explains it (s)
(a failing rank posts its report before its process ends and its connections close)."""
PEER_EXIT_DELAY_S = 1.0
"""How long a rank stopped by a peer's failure waits before it exits (s): the failing rank,
which reports within ``REPORT_WAIT_S``, exits first, and its report and status reach the user."""
_MAX_MESSAGE = 2000
"""Characters of an exception message sent to the other ranks (tracebacks stay local)."""


@dataclass(frozen=True)
class RankFailure:
    """Rank ``rank`` stopped because of an exception of type ``kind`` with ``message``."""

    rank: int
    kind: str
    message: str

    @classmethod
    def of(cls, err: BaseException, rank: int) -> RankFailure:
        message = str(err)
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + " ..."
        return cls(rank, type(err).__name__, message)

    @property
    def headline(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind

    def same_error(self, other: RankFailure) -> bool:
        """The same exception on another rank (e.g. a non-finite global loss, seen by all)."""
        return (self.kind, self.message) == (other.kind, other.message)

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, data: str | bytes) -> RankFailure:
        return cls(**json.loads(data))


class PeerFailedError(CommError):
    """Raised on a rank that found, while waiting in a collective, that another rank failed."""

    def __init__(self, failure: RankFailure, rank: int, where: str) -> None:
        super().__init__(f"rank {failure.rank} failed with {failure.headline} (noticed by rank {rank} in {where})")
        self.failure = failure


class FailureChannel(ABC):
    """Failure reports and their acknowledgements between the ranks of one job, beside the
    collectives. Subclasses move the messages; this class keeps what was seen."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.failures: dict[int, RankFailure] = {}
        """Failures that other ranks posted, seen so far (rank -> failure)."""
        self.posted: RankFailure | None = None
        """This rank's own failure, once posted."""
        self.broken = False
        """The transport failed (its host is gone): no more reads, the collectives' own errors
        and deadlines take over."""
        self._answers: dict[int, str] | None = None

    @abstractmethod
    def _send_failure(self, failure: RankFailure) -> None:
        """Make ``failure`` visible to every other rank."""

    @abstractmethod
    def _fetch(self, state: str) -> None:
        """Read failures posted since the last call into :attr:`failures`, acknowledging each
        with ``state`` (what this rank is doing)."""

    @abstractmethod
    def _acknowledgements(self) -> dict[int, str]:
        """Rank -> its state, for every rank that acknowledged this rank's failure so far."""

    def poll(self, state: str) -> RankFailure | None:
        """The failure of the lowest other rank that posted one, or None; every failure not
        seen before is acknowledged with ``state``. Never raises (a broken transport reads as
        no news)."""
        if not self.broken:
            try:
                self._fetch(state)
            except Exception:  # noqa: BLE001 - store/MPI errors: the host of the channel is gone
                self.broken = True
        return self.failures[min(self.failures)] if self.failures else None

    def post(self, failure: RankFailure) -> None:
        """Make this rank's ``failure`` visible to every other rank (once). Never raises."""
        if self.posted is not None:
            return
        self.posted = failure
        if self.broken:
            return
        try:
            self._send_failure(failure)
        except Exception:  # noqa: BLE001 - a broken transport: the others find out otherwise
            self.broken = True

    def await_answers(self, timeout_s: float = ACK_WAIT_S) -> dict[int, str]:
        """After :meth:`post`: wait up to ``timeout_s`` until every other rank has acknowledged
        this rank's failure, acknowledging theirs meanwhile. Returns rank -> what that rank was
        doing when it answered; the ranks missing did not answer. A second call returns the
        first answers. Never raises."""
        if self._answers is not None:
            return self._answers
        answers: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        state = f"stopping with {self.posted.headline}"[:200] if self.posted else "stopping"
        while not self.broken:
            try:
                self._fetch(state)
                answers = self._acknowledgements()
            except Exception:  # noqa: BLE001 - a broken transport: report what arrived
                self.broken = True
                break
            if len(answers) >= self.world_size - 1 or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        self._answers = answers
        return answers

    def announce(self, failure: RankFailure, timeout_s: float = ACK_WAIT_S) -> dict[int, str]:
        """:meth:`post` then :meth:`await_answers`."""
        self.post(failure)
        return self.await_answers(timeout_s)

    def reachable(self) -> bool:
        """Whether the transport's host still answers (checked without touching the channel)."""
        return True

    def await_failure(self, state: str, timeout_s: float) -> RankFailure | None:
        """:meth:`poll` for up to ``timeout_s``: after a connection broke, whether a peer says why."""
        if not self.broken and not self.reachable():
            self.broken = True
        deadline = time.monotonic() + timeout_s
        while (failure := self.poll(state)) is None and not self.broken and time.monotonic() < deadline:
            time.sleep(0.01)
        return failure


class StoreChannel(FailureChannel):
    """A channel of keys in a c10d store (``TCPStore``; give it a ``PrefixStore`` per job
    attempt and a connection with a short timeout of its own, so that a stopped store host
    cannot hold a read for the process group's timeout). Each read of a healthy channel is one
    round trip (``add(posts, 0)``, ~35 µs on one host). When the store's host is the rank that
    failed, the channel ends with that rank's process; its peers then name it from the broken
    connection instead."""

    def __init__(self, store: Any, rank: int, world_size: int, address: tuple[str, int]) -> None:
        super().__init__(rank, world_size)
        self.store = store
        self.address = address
        """(host, port) of the store server: rank 0's process, or torchrun's agent."""
        self._posts_seen = 0

    def reachable(self) -> bool:
        # A plain TCP connect: an operation on a store whose server is gone fails too, but
        # only after c10d has logged a warning with a C++ stack trace.
        try:
            with socket.create_connection(self.address, timeout=1.0):
                return True
        except OSError:
            return False

    def _send_failure(self, failure: RankFailure) -> None:
        # Record, then list, then count: a reader that sees the count finds the record.
        self.store.set(f"failure/{self.rank}", failure.encode())
        self.store.append("failed", f"{self.rank} ")
        self.store.add("posts", 1)

    def _fetch(self, state: str) -> None:
        posts = self.store.add("posts", 0)
        if posts == self._posts_seen:
            return
        self._posts_seen = posts
        for q in map(int, self.store.get("failed").split()):
            if q == self.rank or q in self.failures:
                continue
            self.failures[q] = RankFailure.decode(self.store.get(f"failure/{q}"))
            self.store.set(f"ack/{q}/{self.rank}", state)
            self.store.add(f"acks/{q}", 1)

    def _acknowledgements(self) -> dict[int, str]:
        if self.store.add(f"acks/{self.rank}", 0) == 0:
            return {}
        keys = {q: f"ack/{self.rank}/{q}" for q in range(self.world_size) if q != self.rank}
        return {q: self.store.get(key).decode() for q, key in keys.items() if self.store.check([key])}


class MpiChannel(FailureChannel):
    """A channel of MPI messages on tag :attr:`TAG` of ``world`` (pickled tuples
    ``("failure", json)`` and ``("ack", state)``). A read is one ``Iprobe``."""

    TAG = 30017
    """Tag of channel messages (MPI guarantees tags up to 32767; the halo exchange uses 7)."""

    def __init__(self, mpi: Any, world: Any) -> None:
        super().__init__(world.Get_rank(), world.Get_size())
        self.MPI, self.world = mpi, world
        self._status = mpi.Status()
        self._answers_received: dict[int, str] = {}
        self._sends: list[Any] = []  # pending sends stay referenced until delivered

    def _send_failure(self, failure: RankFailure) -> None:
        message = ("failure", failure.encode())
        self._sends += [self.world.isend(message, dest=q, tag=self.TAG) for q in range(self.world_size) if q != self.rank]

    def _fetch(self, state: str) -> None:
        while self.world.iprobe(source=self.MPI.ANY_SOURCE, tag=self.TAG, status=self._status):
            source = self._status.Get_source()
            kind, payload = self.world.recv(source=source, tag=self.TAG)
            if kind == "failure":
                self.failures[source] = RankFailure.decode(payload)
                self._sends.append(self.world.isend(("ack", state), dest=source, tag=self.TAG))
            else:
                self._answers_received[source] = payload

    def _acknowledgements(self) -> dict[int, str]:
        return dict(self._answers_received)


@dataclass(frozen=True)
class RankEnding:
    """How rank ``rank`` of ``world_size`` ends after an exception (noted by the session)."""

    rank: int
    world_size: int
    reports: bool
    """This rank prints the error. False where a lower rank reports the same error, and on
    ranks other than 0 that were stopped by a peer's failure."""
    stopped_by_peer: bool
    """The exception is a :class:`PeerFailedError`: exit after ``PEER_EXIT_DELAY_S``."""


_ENDING = "_ddpinn_rank_ending"


def note_ending(err: BaseException, ending: RankEnding) -> None:
    """Attach ``ending`` to ``err`` (read back by :func:`ending_of`)."""
    setattr(err, _ENDING, ending)


def ending_of(err: BaseException) -> RankEnding | None:
    """The ending noted on ``err``; None for errors of one process or raised outside a session."""
    return getattr(err, _ENDING, None)


def end_process(status: int, ending: RankEnding) -> NoReturn:
    """Flush and end the process now with ``status``. After a failure a collective may still be
    pending (the peer never joined it): MPI_Finalize would wait on it or abort, and gloo's
    threads would be torn down under it, so no interpreter teardown runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    if ending.stopped_by_peer:
        time.sleep(PEER_EXIT_DELAY_S)
    os._exit(status)


def format_ranks(ranks) -> str:
    """``[1, 2, 3, 7]`` -> ``"ranks 1-3, 7"``; one rank -> ``"rank 5"``."""
    ranks = sorted(set(ranks))
    spans: list[str] = []
    start = prev = None
    for r in [*ranks, None]:
        if prev is not None and r == prev + 1:
            prev = r
            continue
        if start is not None:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = r
    return f"{'rank' if len(ranks) == 1 else 'ranks'} {', '.join(spans)}"
