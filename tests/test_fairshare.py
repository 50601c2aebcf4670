"""Fair share on its own (studio.fairshare): a simulated single slot and clock, no processes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from studio.fairshare import FairShare


@dataclass(eq=False)
class QueuedJob:
    owner: str
    seq: int
    cost_s: float = 1.0


def run(fair: FairShare, arrivals: list[tuple[float, QueuedJob]], slots: int = 1) -> list[tuple[float, QueuedJob]]:
    """Serve ``arrivals`` ((time, job), sorted) on ``slots`` slots in fair order; returns (start, job) pairs."""
    now, queue, running, started = 0.0, [], [], []
    pending = list(arrivals)
    while pending or queue or running:
        while pending and pending[0][0] <= now:
            queue.append(pending.pop(0)[1])
        while queue and len(running) < slots:
            job = fair.order(queue, lambda j: j.owner, lambda j: j.cost_s, now)[0]
            fair.started(job, queue, lambda j: j.owner)
            queue.remove(job)
            running.append((now + job.cost_s, job))
            started.append((now, job))
        events = [end for end, _ in running] + [pending[0][0]] if pending else [end for end, _ in running]
        now = min(events)
        for end, job in [item for item in running if item[0] <= now]:
            running.remove((end, job))
            fair.charge(job.owner, job.cost_s, end)
    return started


def flood_and_one(fair: FairShare) -> float:
    flood = [(0.0, QueuedJob("flooder", seq)) for seq in range(20)]
    late = QueuedJob("other", 20)
    started = run(fair, flood + [(0.5, late)])
    return next(start for start, job in started if job is late) - 0.5


def test_a_second_owner_waits_about_one_job_not_the_whole_flood():
    assert flood_and_one(FairShare()) <= 1.0  # the running job's remaining half second, then it goes
    # First come, first served (the same queue without fair share) would make it wait the whole flood:
    fifo = run(_Fifo(), [(0.0, QueuedJob("flooder", seq)) for seq in range(20)] + [(0.5, QueuedJob("other", 20))])
    assert [job.owner for _, job in fifo][-1] == "other"


def test_one_owner_s_jobs_keep_their_order():
    jobs = [(0.0, QueuedJob("a", seq)) for seq in range(5)] + [(0.0, QueuedJob("b", seq)) for seq in range(5, 10)]
    started = [job for _, job in run(FairShare(), jobs)]
    for owner in "ab":
        seqs = [job.seq for job in started if job.owner == owner]
        assert seqs == sorted(seqs)
    assert [job.owner for job in started] == list("abababab" "ab")  # equal weights interleave


def test_an_owner_with_much_past_service_still_waits_only_one_round():
    fair = FairShare()
    fair.charge("heavy", 250.0, now=0.0)  # inside the window: far more service than anyone
    arrivals = [(1.0, QueuedJob(owner, seq)) for seq in range(10) for owner in ("b", "c", "d")]
    heavy = QueuedJob("heavy", 99)
    started = [job for _, job in run(fair, sorted(arrivals + [(1.0, heavy)], key=lambda item: item[0]))]
    assert started.index(heavy) <= 3  # behind at most one job of each of the three others


def test_service_leaves_the_window():
    fair = FairShare(window_s=10.0)
    fair.charge("a", 5.0, now=0.0)
    assert fair.service("a", now=5.0) == 5.0
    assert fair.service("a", now=10.5) == 0.0


@pytest.mark.parametrize("weights, share_of_a", [({"a": 2.0}, 2 / 3), ({}, 1 / 2), ({"b": 3.0}, 1 / 4)])
def test_weights_share_the_slot(weights, share_of_a):
    jobs = [(0.0, QueuedJob(owner, seq)) for seq in range(30) for owner in "ab"]
    started = [job for _, job in run(FairShare(weights), jobs)][:24]
    assert sum(job.owner == "a" for job in started) / 24 == pytest.approx(share_of_a, abs=0.05)


class _Fifo(FairShare):
    def order(self, queue, owner_of, cost_of, now, key_of=id):
        return list(queue)
