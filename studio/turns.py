"""Turns: whose queued job may start next, and how many jobs one owner may have waiting or running.

A backend's queue is kept in arrival order; ``Turns`` says in which order its jobs are offered to
routing (``studio.routing.plan_dispatch``):

- **Fair share** (``studio.fairshare``; ``--no-fair-share`` turns it off): the owner with the least
  weighted GPU-seconds over the sliding window goes first, one owner's flood alternates with everyone
  else's jobs, and a job that waited one round of the other owners is ``due``: routing gives it the
  next idle slot. Routing's model affinity still applies among the jobs offered.
- **``--max-running-per-user N``**: an owner's jobs past N running at once are not offered; the
  others pass them.
- **``--max-queue-per-user N``** (``OwnerLimit``): an admission rule (``studio.admission``) that holds
  back only that owner's job; it waits in the waiting room for one of its owner's own jobs to start, or
  is refused with a 429 that names the owner's count and limit, and a Retry-After from the owner's own
  jobs (``owner_place_in_s``). One count for the download phase and the backend's queue together: the
  gate ``join``s its rule to the backend's.

Pure bookkeeping under the backend's lock: no threads, no clock of its own. Never imports torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar

from studio.admission import Line
from studio.fairshare import FairShare
from studio.jobs import Job
from studio.routing import Calls, Estimates, Slot, starts_in_s


class OwnerLimit:
    """``--max-queue-per-user``: at most ``limit()`` jobs of one owner waiting, in this line and in the lines
    ``join``ed to it (the download phase in front of a backend's queue): one count, wherever her jobs wait,
    so jobs waiting for a download and jobs queued never add up to twice the limit.

    Each line gives its rule ``jobs`` (its waiting jobs), ``starts_in_s`` (when an owner's first job there
    should start) and the ``lock`` they are read under by the other lines. The download phase's are
    lock-free snapshots, so only the gate ever waits for a backend's lock while holding its own."""

    shared: ClassVar[bool] = False  # only that owner's jobs are held back: everyone else passes them

    def __init__(self, limit: Callable[[], int], waiting: str = "queued",
                 jobs: Callable[[], Sequence[Job]] = tuple,
                 starts_in_s: Callable[[str], float | None] = lambda owner: None,
                 lock: AbstractContextManager = nullcontext()):
        self.limit = limit
        self.waiting = waiting  # what the owner's jobs do in this line, in words
        self.jobs = jobs
        self.starts_in_s = starts_in_s
        self.lock = lock  # held by this line's own checks; taken to read it from another line
        self.joined: list[OwnerLimit] = []

    def join(self, other: OwnerLimit) -> None:
        """Count ``other``'s line with this one (both ways)."""
        self.joined.append(other)
        other.joined.append(self)

    def counts(self, owner: str, line: Line) -> list[tuple[str, int]]:
        """``owner``'s waiting jobs in each line that has some: (what they do, how many), this line first."""
        counts = [(self.waiting, _mine(line.queued, owner))]
        for other in self.joined:
            with other.lock:
                counts.append((other.waiting, _mine(other.jobs(), owner)))
        return [(words, count) for words, count in counts if count]

    def blocks(self, job: Job, line: Line) -> str | None:
        limit = self.limit()
        if not limit:
            return None
        counts = self.counts(job.owner, line)
        mine = sum(count for _, count in counts)
        if mine < limit:
            return None
        jobs = f"{mine} job{'' if mine == 1 else 's'}"
        what = (f"{jobs} {counts[0][0]}" if len(counts) == 1
                else f"{jobs} waiting ({', '.join(f'{count} {words}' for words, count in counts)})")
        return (f"{job.owner} has {what} (--max-queue-per-user {limit}); "
                f"one of them must start before another is taken")

    def place_in_s(self, owner: str, line: Line) -> float | None:
        """The Retry-After of ``owner``'s refusal, from her own jobs: when the first of them should start,
        in whichever line she has jobs waiting (the soonest; None when no line can tell)."""
        estimates = [self.starts_in_s(owner)] if _mine(line.queued, owner) else []
        for other in self.joined:
            with other.lock:
                if _mine(other.jobs(), owner):
                    estimates.append(other.starts_in_s(owner))
        return min((estimate for estimate in estimates if estimate is not None), default=None)


class Turns:
    """Fair share and the per-owner limits of one backend's queue."""

    def __init__(self, settings, estimates: Estimates, fair: FairShare | None = None):
        self.settings = settings
        self.estimates = estimates
        self.fair = fair or FairShare(settings.shares)

    def order(self, queue: Sequence[Job], running: Sequence[Job], now: float) -> tuple[list[Job], list[Job]]:
        """The jobs to offer routing now, in priority order, and those of them that are due."""
        if self.settings.fair_share:
            ordered = self.fair.order(queue, _owner, self._cost, now, key_of=_key)
            due = self.fair.due(queue, _owner, key_of=_key)
        else:
            ordered, due = list(queue), []
        limit = self.settings.max_running_per_user
        if limit:
            room = Counter({job.owner: limit for job in queue})
            room.subtract(job.owner for job in running)
            offered = []
            for job in ordered:
                if room[job.owner] > 0:
                    offered.append(job)
                    room[job.owner] -= 1
            ordered, due = offered, [job for job in due if job in offered]
        return ordered, due

    def line(self, queue: Sequence[Job], now: float) -> list[Job]:
        """The queue in the order its jobs should start (each job's place in line)."""
        if not self.settings.fair_share:
            return list(queue)
        return self.fair.order(queue, _owner, self._cost, now, key_of=_key)

    def started(self, job: Job, queue: Sequence[Job]) -> None:
        """``job`` leaves ``queue`` (as it was, the job still in it) for a slot."""
        self.fair.started(job, queue, _owner, key_of=_key)

    def ended(self, job: Job, slot_s: float, now: float) -> None:
        """``job`` held a slot for ``slot_s`` seconds (its load included): its owner's service."""
        self.fair.charge(job.owner, slot_s, now)

    def forget(self, job: Job) -> None:
        """``job`` left the queue without running."""
        self.fair.forget(job, key_of=_key)

    def owner_place_in_s(self, owner: str, queue: Sequence[Job], slots: Sequence[Slot], now: float,
                         calls: Calls | None = None) -> float | None:
        """When the first of ``owner``'s queued jobs should start (so that the owner has a place again);
        ``calls``: how the slots will group the queue into calls (batching), else a job a call."""
        line = self.line(queue, now)
        first = next((index for index, job in enumerate(line) if job.owner == owner), None)
        if first is None:
            return 0.0
        starts = starts_in_s(line, slots, self.estimates, now, calls)
        return None if starts is None else starts[first]

    def _cost(self, job: Job) -> float:
        return self.estimates.job_s(job.spec.id, job.request)


def _mine(jobs: Sequence[Job], owner: str) -> int:
    return sum(1 for job in jobs if job.owner == owner)


def _owner(job: Job) -> str:
    return job.owner


def _key(job: Job) -> str:
    return job.id
