"""The Ray backend's queue in the app (``studio.ray_backend``): jobs wait here, not in Serve's queue,
while every replica is busy, and go to Serve one per free place, in fair-share order.

Serve's own queue is first come, first served: a flood sent at once would make everybody else wait
behind it. So the app sends a job only when a place is free (``places``: one per replica alive, each
taking ``MAX_ONGOING`` requests at once; under autoscaling ``--max-replicas``, so that Serve still sees
the demand it scales on), and picks it as the local backend does (``studio.turns.Turns``): fair share
between owners, the one-round bound, ``--max-running-per-user``, and model affinity within that
choice: a job whose model only busy replicas hold lets the next job whose model an idle replica holds
go first (Serve's multiplexing then routes it there, no load), and waits for its own replica, unless
it is due. A sent job holds its place until its
call ends (a cancelled one until its replica has stopped it), and its time is charged to its owner.
The running jobs' pace (their steps) says when places free: queue positions, ``wait_s`` and
Retry-After (``ends_in_s``).

Pure bookkeeping under the backend's lock: no threads, no clock of its own, no call to Ray.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from studio.jobs import Job
from studio.ray_replica import MAX_ONGOING
from studio.routing import Estimates
from studio.schemas import JobStage, Progress
from studio.turns import Turns


class RayQueue:
    """The Ray jobs the app holds (admitted, not sent yet), those sent to Serve, and their pace."""

    def __init__(self, settings):
        self.settings = settings
        self.turns = Turns(settings, Estimates())  # fair share and --max-running-per-user, as on local slots
        self.held: list[Job] = []  # in arrival order
        self.sent: dict[Job, float] = {}  # each sent job whose call has not ended -> when it was sent
        self._steps: dict[Job, tuple[float, int, int]] = {}  # a generating job -> (since, step, total)
        self.resident: dict[int, str] = {}  # replica (slot index) -> the model it holds, as last seen

    def places(self, replicas: int) -> int:
        """How many jobs Serve may hold at once: what its replicas run (or, autoscaling, may run)."""
        if self.settings.min_replicas is not None or self.settings.max_replicas is not None:
            replicas = max(replicas, self.settings.max_replicas or 0)
        return MAX_ONGOING * max(1, replicas)

    def hold(self, job: Job) -> None:
        self.held.append(job)

    def drop(self, job: Job) -> None:
        """``job`` ended: out of the held ones (never sent) and of the pace."""
        self._steps.pop(job, None)
        if job in self.held:
            self.held.remove(job)
            self.turns.forget(job)

    def release(self, places: int, now: float) -> list[Job]:
        """The held jobs to send now, one per free place, each the next in fair-share order."""
        released = []
        while self.held and len(self.sent) < places:
            offered, due = self.turns.order(self.held, list(self.sent), now)  # the due jobs come first
            if not offered:
                break  # the owners of all held jobs are at --max-running-per-user
            job = self._affine(offered, due)
            self.turns.started(job, self.held)
            self.held.remove(job)
            self.sent[job] = now
            released.append(job)
        return released

    def _affine(self, offered: list[Job], due: list[Job]) -> Job:
        """The first offered job, unless only busy replicas hold its model while an idle one holds the model
        of a later offered job: that one goes (no load), the first waits for its replica. A due job never
        waits (the one-round bound); while a sent job has no replica yet, where it goes is Serve's choice."""
        first = offered[0]
        busy = {job.slot for job in self.sent}
        if first in due or None in busy:
            return first
        idle = {model for slot, model in self.resident.items() if slot not in busy}
        held_busy = {model for slot, model in self.resident.items() if slot in busy}
        if first.spec.id in idle or first.spec.id not in held_busy:
            return first
        return next((job for job in offered if job.spec.id in idle), first)

    def ended(self, job: Job, now: float) -> None:
        """``job``'s call to Serve has ended: its place frees, and its time is its owner's service."""
        sent_at = self.sent.pop(job, None)
        if sent_at is not None:
            self.turns.ended(job, now - sent_at, now)

    def line(self, now: float) -> list[Job]:
        """The held jobs in the order they should be sent (each one's place in line)."""
        return self.turns.line(self.held, now)

    # -- the pace of the running jobs --------------------------------------------------

    def paced(self, job: Job, progress: Progress, now: float) -> None:
        """Note a running job's step (its generating stage starts the clock), for ``ends_in_s``."""
        if progress.stage == JobStage.GENERATING:
            self._steps[job] = (now, progress.step, progress.total)
        elif progress.stage == JobStage.STEP:
            self._steps[job] = (self._steps.get(job, (now,))[0], progress.step, progress.total)

    def ends_in_s(self, count: int, now: float, owner: str | None = None) -> float | None:
        """Seconds until ``count`` running jobs (``owner``'s, when she has some) have ended, each freed place
        taking the next job; from each job's pace so far; None while nothing has made a step yet."""
        if count <= 0:
            return 0.0
        steps = [line for job, line in self._steps.items() if job.owner == owner] or list(self._steps.values())
        return _ends_in_s(count, [((now - since) / step, step, total) for since, step, total in steps if step])

    def owner_starts_in_s(self, owner: str, waiting: Sequence[Job], idle: int, now: float) -> float | None:
        """When the first of ``owner``'s ``waiting`` jobs (the line in order) should start; None when she has
        none waiting, or nothing tells yet."""
        first = next((index for index, job in enumerate(waiting) if job.owner == owner), None)
        if first is None:
            return None
        estimates = [self.ends_in_s(first + 1 - idle, now)]
        limit = self.settings.max_running_per_user
        if limit and sum(1 for job in self.sent if job.owner == owner) >= limit:
            estimates.append(self.ends_in_s(1, now, owner))  # not before one of her own running jobs ends
        return None if None in estimates else max(estimates)


def _ends_in_s(count: int, paces: list[tuple[float, int, int]]) -> float | None:
    """When the ``count``-th place frees, from each running job's (seconds a step, step, total steps)."""
    if not paces:
        return None
    ends = [pace * (total - step) for pace, step, total in paces]
    whole_job_s = sum(pace * total for pace, _, total in paces) / len(paces)  # the next ones, at that pace
    heapq.heapify(ends)
    for _ in range(count):
        at = heapq.heappop(ends)
        heapq.heappush(ends, at + whole_job_s)
    return at
