"""The admission policy on its own (no processes, no clock): the queue limit, the waiting room,
the refusal's words and Retry-After, the load timeout, and a rule that holds back only some jobs.
The backends' own tests (test_slots, test_ray, test_downloads) show each of them obeys it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from studio.admission import Admission, Line, Verdict
from studio.catalog import load_catalog
from studio.errors import ModelLoadFailed, QueueFull
from studio.jobs import Job
from studio.schemas import GenerationRequest, JobStage


@pytest.fixture(scope="module")
def resolved():
    return load_catalog().resolve(GenerationRequest(model="sdxl-turbo", prompt="a lighthouse"))


@pytest.fixture
def jobs(resolved):
    return lambda count: [Job(*resolved, seq=index) for index in range(count)]


def settings(max_queue=2, queue_wait_s=10.0, load_timeout_s=0.0):
    return SimpleNamespace(max_queue=max_queue, queue_wait_s=queue_wait_s, load_timeout_s=load_timeout_s)


def test_under_the_limit_a_job_takes_a_place_at_once(jobs):
    policy = Admission.from_settings(settings())
    first, second = jobs(2)
    assert policy.admit(first, Line([], 0), 0.0) is Verdict.QUEUE
    assert policy.admit(second, Line([first], 1), 0.0) is Verdict.QUEUE
    assert not policy.room


def test_past_the_limit_jobs_wait_first_come_first_served_in_a_room_as_large_as_the_queue(jobs):
    config = settings(max_queue=2, queue_wait_s=10.0)
    policy = Admission.from_settings(config)
    queued, waiting, late = jobs(2), jobs(2), jobs(1)[0]
    full = Line(queued, 2)
    assert [policy.admit(job, full, 1.0) for job in waiting] == [Verdict.WAIT, Verdict.WAIT]
    assert policy.admit(late, full, 1.0) is Verdict.REFUSE  # the room holds as many as the queue
    # A place frees: the first to come is let in (the backend queues it), the next waits on.
    line = queued[1:]
    for job in policy.let_in(lambda: Line(line, len(line))):
        line.append(job)
    assert line == [queued[1], waiting[0]] and list(policy.room) == [waiting[1]]
    config.max_queue = 4  # read at each check: a changed setting applies at once
    assert list(policy.let_in(lambda: Line(line, len(line)))) == [waiting[1]]


def test_nobody_passes_the_waiting_room(jobs):
    policy = Admission.from_settings(settings(max_queue=2, queue_wait_s=5.0))
    *queued, waiting, newcomer = jobs(4)
    assert policy.admit(waiting, Line(queued, 2), 0.0) is Verdict.WAIT
    # A place freed a moment ago and the backend has not let the waiting job in yet: the newcomer waits behind it.
    assert policy.admit(newcomer, Line(queued[:1], 1), 0.5) is Verdict.WAIT
    line = queued[:1]
    for job in policy.let_in(lambda: Line(line, len(line))):
        line.append(job)
    assert line == [queued[0], waiting] and list(policy.room) == [newcomer]  # in the order they came


def test_without_queue_wait_a_job_past_the_limit_is_refused_at_once_with_a_retry_hint(jobs):
    policy = Admission.from_settings(settings(max_queue=2, queue_wait_s=0))
    queued, job = jobs(2), jobs(1)[0]
    line = Line(queued, 2)
    assert policy.admit(job, line, 0.0) is Verdict.REFUSE
    refusal = policy.refusal(job, line, 41.6)
    assert isinstance(refusal, QueueFull) and refusal.status == 429 and refusal.retry_after_s == 42
    assert refusal.message == "the queue is full: 2 jobs are waiting (limit 2); try again in about 42 s"
    assert policy.refusal(job, line, None).retry_after_s == 5  # nothing to estimate from: a short guess


def test_a_refusal_says_who_else_waits_and_what_the_line_waits_for(jobs):
    policy = Admission(lambda: 1, lambda: 60.0, waiting_for=" for model downloads", unknown_retry_s=30)
    queued, waiting, late = jobs(3)
    line = Line([queued], 1)
    assert policy.admit(waiting, line, 0.0) is Verdict.WAIT
    assert policy.admit(late, line, 0.0) is Verdict.REFUSE
    refusal = policy.refusal(late, line, None)
    assert refusal.message == ("the queue is full: 1 jobs are waiting for model downloads (limit 1) and 1 more "
                               "wait for a place; try again in about 30 s")


def test_a_wait_that_ends_without_a_place_leaves_the_room(jobs):
    policy = Admission.from_settings(settings(max_queue=2, queue_wait_s=2.0))
    *queued, early, later = jobs(4)
    assert policy.admit(early, Line(queued, 2), 0.0) is policy.admit(later, Line(queued, 2), 1.0) is Verdict.WAIT
    assert policy.expired(1.9) == []
    assert policy.expired(2.0) == [early] and list(policy.room) == [later]
    assert policy.leave(later) and not policy.leave(later) and not policy.room


def test_a_rule_that_holds_back_one_owner_lets_the_others_pass(jobs):
    """How a per-owner limit plugs in: not shared, so only that owner's jobs wait for it."""
    policy = Admission.from_settings(settings(max_queue=10, queue_wait_s=30.0))
    flood, other = jobs(3), jobs(1)[0]
    owners = {job: "flood" for job in flood} | {other: "someone"}

    class OnePerOwner:
        shared = False

        def blocks(self, job, line):
            mine = sum(1 for queued in line.queued if owners[queued] == owners[job])
            return f"{owners[job]} already has {mine} jobs waiting (limit 1)" if mine >= 1 else None

    policy.rules.append(OnePerOwner())
    line = Line([flood[0]], 1)
    assert policy.admit(flood[1], line, 0.0) is Verdict.WAIT
    assert policy.admit(other, line, 0.0) is Verdict.QUEUE  # passes the flood's waiting job
    assert policy.refusal(flood[2], line, None).message.startswith("flood already has 1 jobs waiting (limit 1)")
    assert list(policy.let_in(lambda: Line([flood[0], other], 2))) == []  # still held back by its owner's limit
    assert list(policy.let_in(lambda: Line([other], 1))) == [flood[1]]


def test_a_load_past_load_timeout_is_stuck(jobs):
    job = jobs(1)[0]
    policy = Admission.from_settings(settings(load_timeout_s=30))
    assert policy.load_stuck(job, 100.0, 129.9, "slot 0 (cpu)", "the slot restarts") is None
    assert policy.load_stuck(job, None, 500.0, "slot 0 (cpu)", "the slot restarts") is None  # not loading
    stuck = policy.load_stuck(job, 100.0, 130.0, "slot 0 (cpu)", "the slot restarts")
    assert isinstance(stuck, ModelLoadFailed) and stuck.status == 503
    assert "on slot 0 (cpu) took longer than 30 s (--load-timeout), so it was stopped and the slot restarts" \
        in stuck.message
    assert Admission.from_settings(settings(load_timeout_s=0)).load_stuck(job, 0.0, 1e9, "x", "y") is None  # off


def test_queued_jobs_hear_of_each_change_of_place_with_their_expected_wait(jobs):
    line = jobs(3)
    Admission.announce(line, lambda position: 2.04 * (position + 1))
    Admission.announce(line[1:], lambda position: None)  # the first started: the others move up
    for job in line:
        job.finish(RuntimeError("over"))
    seen = [[(e.stage, e.queue_position, e.wait_s) for e in job.iter_events()] for job in line]
    assert seen == [
        [(JobStage.QUEUED, 0, 2.0)],
        [(JobStage.QUEUED, 1, 4.1), (JobStage.QUEUED, 0, None)],
        [(JobStage.QUEUED, 2, 6.1), (JobStage.QUEUED, 1, None)],
    ]
    assert [job.queue_position for job in line] == [None] * 3  # ended
    assert not line[0].move_to(0) and line[0].move_to(1)  # a change only when the place changes
