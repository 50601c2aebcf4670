"""Fair share: which owner's queued job goes next when many people share the slots.

Pure (no clock, no threads): the backend tells it what ran (``charge``) and asks for an order
(``order``). An owner is an API key's name, a UI login, or the client's address.

- **Least service first.** Each owner's service is the GPU-seconds its jobs used within the last
  ``window_s``, divided by its weight (``--share NAME:WEIGHT``, default 1). The queued jobs are
  ordered by their owner's service (plus the jobs of that owner already placed ahead), so one
  owner's flood alternates with everyone else's jobs instead of going first.
- **Never passed over forever.** The first waiting job of each owner counts the jobs of other owners
  that start before it. Once every other owner with jobs waiting has passed it its share of a round
  (once at equal weights; twice for an owner of twice its weight), it goes first: its wait is
  bounded by one round of the others, whatever their service so far.
- Within one owner, jobs keep their arrival order.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

WINDOW_S = 300.0  # how far back service counts: long enough to span a flood, short enough to forgive
DEFAULT_WEIGHT = 1.0


@dataclass
class _Account:
    used: deque[tuple[float, float]] = field(default_factory=deque)  # (when it ended, GPU-seconds)
    total: float = 0.0


class FairShare:
    """Service per owner over a sliding window, and the fair order of a queue."""

    def __init__(self, weights: dict[str, float] | None = None, window_s: float = WINDOW_S):
        self.weights = dict(weights or {})
        self.window_s = window_s
        self._accounts: dict[str, _Account] = {}
        self._passed: dict[Hashable, Counter[str]] = {}  # an owner's first job -> who went before it, how often

    def charge(self, owner: str, seconds: float, now: float) -> None:
        """``owner`` used a slot for ``seconds``, ending at ``now``."""
        account = self._accounts.setdefault(owner, _Account())
        account.used.append((now, seconds))
        account.total += seconds

    def service(self, owner: str, now: float) -> float:
        """Weighted GPU-seconds of ``owner`` within the window."""
        account = self._accounts.get(owner)
        if account is None:
            return 0.0
        while account.used and account.used[0][0] < now - self.window_s:
            account.total -= account.used.popleft()[1]
        if not account.used:
            del self._accounts[owner]
            return 0.0
        return max(0.0, account.total) / self.weights.get(owner, DEFAULT_WEIGHT)

    def weight(self, owner: str) -> float:
        return self.weights.get(owner, DEFAULT_WEIGHT)

    def order(self, queue: Sequence, owner_of: Callable[[object], str], cost_of: Callable[[object], float],
              now: float, key_of: Callable[[object], Hashable] = id) -> list:
        """The queue in fair order (``queue`` is in arrival order; ``cost_of`` a job's expected GPU-seconds)."""
        lines: dict[str, deque] = {}  # each owner's jobs in arrival order
        for job in queue:
            lines.setdefault(owner_of(job), deque()).append(job)
        projected = {owner: self.service(owner, now) for owner in lines}
        patient = self._patient(lines, key_of)
        for job in patient:
            lines[owner_of(job)].popleft()
            projected[owner_of(job)] += cost_of(job) / self.weight(owner_of(job))
        lines = {owner: line for owner, line in lines.items() if line}
        arrival = {key_of(job): index for index, job in enumerate(queue)}
        ordered = sorted(patient, key=lambda job: arrival[key_of(job)])
        # Take the first job of the owner with the least projected service, then charge that owner its
        # job's expected cost, so that a flood interleaves with everyone else's jobs.
        while lines:
            owner = min(lines, key=lambda name: (projected[name], arrival[key_of(lines[name][0])]))
            job = lines[owner].popleft()
            ordered.append(job)
            projected[owner] += cost_of(job) / self.weight(owner)
            if not lines[owner]:
                del lines[owner]
        return ordered

    def due(self, queue: Sequence, owner_of: Callable[[object], str], key_of: Callable[[object], Hashable] = id) -> list:
        """The jobs that waited their round (every other owner with jobs waiting passed them its share):
        they go before any other, whatever their owners' service (the one-round bound)."""
        lines: dict[str, deque] = {}
        for job in queue:
            lines.setdefault(owner_of(job), deque()).append(job)
        return self._patient(lines, key_of)

    def started(self, job, queue: Sequence, owner_of: Callable[[object], str],
                key_of: Callable[[object], Hashable] = id) -> None:
        """``job`` left ``queue`` for a slot: the first waiting job of every other owner was passed over
        by its owner once. Call with the queue as it was, the job still in it."""
        owner = owner_of(job)
        self._passed.pop(key_of(job), None)
        firsts: dict[str, object] = {}
        for other in queue:
            firsts.setdefault(owner_of(other), other)
        for other_owner, first in firsts.items():
            if other_owner != owner:
                self._passed.setdefault(key_of(first), Counter())[owner] += 1

    def forget(self, job, key_of: Callable[[object], Hashable] = id) -> None:
        """``job`` left the queue without running (cancelled, refused)."""
        self._passed.pop(key_of(job), None)

    def _patient(self, lines: dict[str, deque], key_of) -> list:
        return [line[0] for owner, line in lines.items() if self._is_patient(owner, line[0], lines, key_of)]

    def _is_patient(self, owner: str, first, lines: dict, key_of) -> bool:
        passed = self._passed.get(key_of(first))
        others = [other for other in lines if other != owner]
        if not passed or not others:
            return False
        return all(passed[other] >= max(1, round(self.weight(other) / self.weight(owner))) for other in others)
