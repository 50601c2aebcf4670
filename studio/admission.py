"""One admission policy for every line a job waits in: the local backend's queue (``studio.slots``),
the Ray backend's (``studio.ray_backend``) and the download phase's (``studio.downloads``).

A job asks for a place in a ``Line`` (the jobs admitted and waiting there: for a slot, a replica
or a download). The policy's ``rules`` say whether it may take one now; the first is ``QueueLimit``
(``--max-queue``). A job that may not waits up to ``--queue-wait`` seconds in the waiting room, first
come first served, for a place; the room holds as many jobs as the queue. Past that, or once its
wait is over, it is refused with ``QueueFull`` and a Retry-After of when a place should free (the
backend estimates it; ``QueueFull.retry_in`` turns it into whole seconds). The policy also says when
a model's load is stuck (``--load-timeout``), and tells queued jobs their place and expected wait.

More rules plug in (``Admission.rules``), such as per-owner limits: a ``shared`` rule blocks every
job alike, so nobody passes a job it holds back in the waiting room; a rule that is not shared
(one owner's limit) holds back only some jobs, and the others pass them.

Pure bookkeeping: no threads, no clock and no lock of its own; each backend calls it under its
own lock, with its own ``now``. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, NamedTuple, Protocol

from studio.errors import ModelLoadFailed, QueueFull
from studio.jobs import Job
from studio.schemas import JobStage, Progress

RETRY_AFTER_DEFAULT_S = 5  # a refusal's retry hint when no running job gives an estimate


class Line(NamedTuple):
    """A line of jobs as the policy sees it when a job asks for a place."""

    queued: Sequence[Job]  # the jobs holding a place (admitted, not running yet), in order
    backlog: int  # how many of them count against --max-queue (local: those no idle slot can start now)


class Rule(Protocol):
    """One condition for a place in the line."""

    shared: bool  # blocks every job alike (True), or only some jobs (one owner's), which others may pass

    def blocks(self, job: Job, line: Line) -> str | None:
        """Why ``job`` may not take a place in ``line`` now (the refusal's first words); None when it may."""


@dataclass
class QueueLimit:
    """``--max-queue``: at most ``limit()`` jobs of the backlog (read at each check: a changed setting
    applies at once; None: no limit)."""

    limit: Callable[[], int | None]
    waiting_for: str = ""  # what the line waits for, in words: " for model downloads"
    shared: ClassVar[bool] = True

    def blocks(self, job: Job, line: Line) -> str | None:
        limit = self.limit()
        return None if limit is None or line.backlog < limit else self.describe(line)

    def describe(self, line: Line) -> str:
        return f"the queue is full: {line.backlog} jobs are waiting{self.waiting_for} (limit {self.limit()})"


class Verdict(Enum):
    """What ``Admission.admit`` decided for a job."""

    QUEUE = "queue"  # it takes a place in the line now
    WAIT = "wait"  # it waits in the waiting room (``let_in`` hands it over later, or ``expired`` refuses it)
    REFUSE = "refuse"  # it is refused now (``refusal`` says why and when to retry)


class Admission:
    """The admission policy of one line: its rules, its waiting room and its load timeout."""

    def __init__(self, max_queue: Callable[[], int | None], queue_wait_s: Callable[[], float] = lambda: 0.0,
                 load_timeout_s: Callable[[], float] = lambda: 0.0, *, waiting_for: str = "",
                 unknown_retry_s: int = RETRY_AFTER_DEFAULT_S):
        self.limit = QueueLimit(max_queue, waiting_for)
        self.rules: list[Rule] = [self.limit]
        self.queue_wait_s = queue_wait_s
        self.load_timeout_s = load_timeout_s
        self.unknown_retry_s = unknown_retry_s
        self.room: dict[Job, float] = {}  # the waiting room: each job to its deadline, in arrival order

    @classmethod
    def from_settings(cls, settings, **options) -> Admission:
        """``--max-queue``, ``--queue-wait`` and ``--load-timeout``, read at every use (tests and a
        running studio may change them)."""
        return cls(lambda: settings.max_queue, lambda: settings.queue_wait_s, lambda: settings.load_timeout_s,
                   **options)

    # -- a place in the line ---------------------------------------------------------

    def admit(self, job: Job, line: Line, now: float) -> Verdict:
        """A new job: a place now, the waiting room (entered here), or a refusal."""
        if not self._reasons(job, line) and not self._anyone_ahead(line):
            return Verdict.QUEUE
        wait_s, limit = self.queue_wait_s(), self.limit.limit()
        if wait_s > 0 and (limit is None or len(self.room) < limit):
            self.room[job] = now + wait_s  # first come, first served: nobody passes it
            return Verdict.WAIT
        return Verdict.REFUSE

    def let_in(self, line: Callable[[], Line]) -> Iterator[Job]:
        """The waiting jobs that may take a place now, in arrival order, each taken out of the room.
        ``line()`` is asked again before each: the caller has placed the one before."""
        for job in list(self.room):
            if job not in self.room:
                continue
            reasons = self._reasons(job, line())
            if any(rule.shared for rule, _ in reasons):
                return  # the same holds for everyone behind it
            if not reasons:
                del self.room[job]
                yield job

    def expired(self, now: float) -> list[Job]:
        """The waiting jobs whose ``--queue-wait`` is over, taken out of the room (to be refused)."""
        gone = [job for job, deadline in self.room.items() if deadline <= now]
        for job in gone:
            del self.room[job]
        return gone

    def leave(self, job: Job) -> bool:
        """Take a cancelled job out of the waiting room; False when it was not there."""
        return self.room.pop(job, None) is not None

    def clear(self) -> list[Job]:
        """Empty the waiting room (shutting down, or nobody can serve): the jobs that were in it."""
        jobs, self.room = list(self.room), {}
        return jobs

    def refusal(self, job: Job, line: Line, place_in_s: float | None) -> QueueFull:
        """``QueueFull`` for ``job``: the rule that holds it back, who else waits for a place, and
        when to retry (``place_in_s``: when a place should free, None when nothing tells)."""
        reasons = self._reasons(job, line)
        reason = reasons[0][1] if reasons else self.limit.describe(line)
        also = f" and {len(self.room)} more wait for a place" if self.room else ""
        return QueueFull.retry_in(reason + also, place_in_s, self.unknown_retry_s)

    # -- while jobs wait and load ------------------------------------------------------

    @staticmethod
    def announce(line: Sequence[Job], wait_s: Callable[[int], float | None]) -> None:
        """Tell each job of ``line`` (the queue, then the waiting room) that moved its place or whose line
        changed length, with when it should start (``wait_s(position)``: from the same estimates as
        Retry-After; None when unknown)."""
        for position, job in enumerate(line):
            if job.move_to(position, len(line)):
                expected = wait_s(position)
                job.emit(Progress(JobStage.QUEUED, queue_position=position, queue_length=len(line),
                                  wait_s=None if expected is None else round(expected, 1)))

    def load_stuck(self, job: Job, loading_since: float | None, now: float, where: str,
                   then: str) -> ModelLoadFailed | None:
        """The error for a model load running past ``--load-timeout`` (no cancel can reach a load, so
        the backend then replaces what runs it: ``then`` says how); None while it is in time."""
        limit = self.load_timeout_s()
        if not limit or loading_since is None or now - loading_since < limit:
            return None
        return ModelLoadFailed(
            f"loading {job.spec.label} on {where} took longer than {limit:g} s (--load-timeout), so it was "
            f"stopped and {then}; try again, or check the disk holding the model"
        )

    def _reasons(self, job: Job, line: Line) -> list[tuple[Rule, str]]:
        return [(rule, reason) for rule in self.rules if (reason := rule.blocks(job, line)) is not None]

    def _anyone_ahead(self, line: Line) -> bool:
        """A waiting job is ahead of a newcomer unless only its own (not shared) limits hold it back."""
        for waiting in self.room:
            reasons = self._reasons(waiting, line)
            if not reasons or any(rule.shared for rule, _ in reasons):
                return True
        return False
