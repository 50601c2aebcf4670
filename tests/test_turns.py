"""Fair share and the per-owner limits on the local backend: one slot manager, two CPU workers, tiny SDXL.

Each test reads the settings it changes at once (the manager reads them at every decision), so one
manager serves them all. Jobs are 2 steps of ``faults.SLOW`` (each step at least 0.2 s): about one
second each, whatever else the machine runs.
"""

from __future__ import annotations

import threading
import time

import faults
import pytest

from studio.config import Settings
from studio.errors import QueueFull
from studio.jobs import Job
from studio.schemas import GenerationRequest
from studio.slots import SlotManager
from tests.live import wait_until

BASE = "sdxl-base"
JOB = dict(prompt=faults.SLOW, steps=2, width=64, height=64)
LONG = dict(prompt=faults.SLOW, steps=40, width=64, height=64)  # about 8 s: stays running while a test looks
START_S = 120


@pytest.fixture(scope="module")
def manager(tiny_models, tiny_catalog):
    catalog = tiny_catalog(BASE)
    settings = Settings(devices=["cpu", "cpu"], models_dir=tiny_models(BASE), preload=[BASE, BASE],
                        fault_hook="faults:install", max_queue=32, queue_wait_s=0.0)
    manager = SlotManager(settings, catalog)
    manager.catalog = catalog
    manager.start()
    yield manager
    manager.shutdown()


@pytest.fixture
def settings(manager, monkeypatch):
    """The manager's settings; whatever a test changes goes back after it."""
    for name in ("fair_share", "max_queue_per_user", "max_running_per_user", "queue_wait_s"):
        monkeypatch.setattr(manager.settings, name, getattr(manager.settings, name))
    return manager.settings


def submit(manager, owner: str, **fields) -> Job:
    spec, request = manager.catalog.resolve(GenerationRequest(model=BASE, **{**JOB, **fields}))
    return manager.submit(spec, request, owner)


def finishing_order(jobs: list[Job]) -> list[Job]:
    """The jobs in the order they ended (each waited in its own thread)."""
    ended: list[Job] = []
    lock = threading.Lock()

    def follow(job: Job) -> None:
        job.wait(START_S)
        with lock:
            ended.append(job)

    threads = [threading.Thread(target=follow, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(START_S)
    return ended


def flood_and_one(manager, monkeypatch, flood: int = 10) -> tuple[int, int]:
    """``flood`` jobs of one owner, then one of another half a second later: how many of the flood's
    jobs started (were bound to a slot) after the late one arrived and before it, and how many of them
    had not started when it arrived."""
    bound: list[Job] = []
    started = manager.turns.started

    def recording(job, queue):
        bound.append(job)
        started(job, queue)

    monkeypatch.setattr(manager.turns, "started", recording)
    jobs = [submit(manager, "flood", seed=seed) for seed in range(flood)]
    time.sleep(0.5)
    late = submit(manager, "late")
    arrived = len(bound)  # the jobs bound before it arrived
    finishing_order([*jobs, late])
    return bound.index(late) - arrived, flood - arrived


def test_a_late_owner_waits_one_round_not_the_whole_flood(manager, settings, monkeypatch):
    """Two slots: the late owner's job takes the next slot that frees (at most one flood job, on the
    other slot, may start before it); first come, first served makes it wait for the rest of the flood."""
    settings.fair_share = True
    passed, left = flood_and_one(manager, monkeypatch)
    assert passed <= 1 and left >= 4, (passed, left)
    settings.fair_share = False
    passed, left = flood_and_one(manager, monkeypatch)
    assert passed == left >= 4  # the whole rest of the flood went first


def test_the_queue_per_user_refuses_with_the_owner_s_own_count(manager, settings):
    settings.max_queue_per_user = 2
    ann = [submit(manager, "ann", **LONG) for _ in range(4)]  # two run, two wait: her limit
    with pytest.raises(QueueFull) as refused:
        submit(manager, "ann")
    assert "ann has 2 jobs queued (--max-queue-per-user 2)" in str(refused.value)
    assert refused.value.status == 429 and 1 <= refused.value.retry_after_s <= 60  # her first waiting job's start
    bob = submit(manager, "bob")  # another owner is not held back by ann's limit
    owners = {owner.owner: owner for owner in manager.status().owners}
    assert (owners["ann"].running, owners["ann"].queued, owners["bob"].queued) == (2, 2, 1)
    for job in [*ann, bob]:
        job.cancel()


def test_the_queue_per_user_is_one_count_with_the_jobs_waiting_for_downloads(manager, settings, tiny_models, tmp_path,
                                                                             monkeypatch):
    """--max-queue-per-user counts an owner's jobs waiting for a model download together with her queued ones
    (not N of each): whichever door her next job comes in by, the 429 names both counts and her limit, with a
    Retry-After from her own jobs; another owner passes."""
    from hubserver import hub_repos, serve_hub, use_hub

    from studio.catalog import load_catalog
    from studio.downloads import DownloadGate

    settings.max_queue_per_user = 2
    hub_catalog = load_catalog()  # no models folder: every model comes from the hub
    turbo = hub_catalog.resolve(GenerationRequest(model="sdxl-turbo", prompt="a red fox"))
    base = manager.catalog.resolve(GenerationRequest(model=BASE, **LONG))  # on disk: straight to the queue
    with serve_hub(hub_repos(tiny_models("sdxl-turbo"), ["sdxl-turbo"])) as hub:
        use_hub(monkeypatch, hub, tmp_path / "hf", environment=False)
        hub.throttle_bps = sum(len(f.data) for f in hub.repos["stabilityai/sdxl-turbo"].files.values()) / 60
        gate = DownloadGate(manager, hub_catalog, offline=False, max_waiting=8, max_waiting_per_owner=2)
        wait_until(lambda: not any(slot.busy for slot in manager.status().slots), START_S, "idle slots")
        jobs = [gate.submit(*base, "ann") for _ in range(3)]  # two run, one is queued
        try:
            jobs.append(gate.submit(*turbo, "ann"))  # waits for its download: her second waiting job
            for door in (base, turbo):  # the backend's queue, the download phase
                with pytest.raises(QueueFull) as refused:
                    gate.submit(*door, "ann")
                message = str(refused.value)
                assert "ann has 2 jobs waiting (" in message and "(--max-queue-per-user 2)" in message, message
                assert "1 queued" in message and "1 waiting for model downloads" in message, message
                assert refused.value.status == 429 and 1 <= refused.value.retry_after_s <= 60  # her queued job's start
            jobs.append(gate.submit(*turbo, "bob"))  # another owner is not held back by ann's count
            owners = {owner.owner: owner for owner in gate.status().owners}
            assert (owners["ann"].running, owners["ann"].queued, owners["ann"].downloading) == (2, 1, 1)
            assert owners["bob"].downloading == 1
        finally:
            manager.owner_limit.joined.remove(gate.owner_limit)  # the module's manager serves on alone
            for job in jobs:
                job.cancel()
    wait_until(lambda: not any(slot.busy for slot in manager.status().slots), START_S, "idle slots")


def test_the_running_per_user_leaves_a_slot_to_the_others(manager, settings):
    settings.max_running_per_user = 1
    ann = [submit(manager, "ann", **LONG) for _ in range(2)]
    wait_until(lambda: manager.status().owners and manager.status().owners[0].running == 1, START_S, "ann running")
    time.sleep(0.5)  # an idle slot that could take her second job does not
    owners = {owner.owner: owner for owner in manager.status().owners}
    assert (owners["ann"].running, owners["ann"].queued) == (1, 1)
    assert sum(slot.busy for slot in manager.status().slots) == 1
    bob = submit(manager, "bob", **LONG)
    wait_until(lambda: {o.owner: o.running for o in manager.status().owners}.get("bob") == 1, START_S, "bob running")
    for job in [*ann, bob]:
        job.cancel()
    wait_until(lambda: not any(slot.busy for slot in manager.status().slots), START_S, "idle slots")


def test_each_queued_job_hears_its_place_among_every_owner_s_jobs():
    """What the UI's status line shows: the place in line among all users' jobs and how many are ahead;
    a job hears again when the line behind it grows."""
    from studio.admission import Admission
    from studio.catalog import load_catalog
    from studio.errors import JobCancelled
    from studio.ui.text import queued_text

    spec = load_catalog().get(BASE)
    request = spec.check(GenerationRequest(model=BASE, prompt="a lighthouse"))
    line = [Job(spec, request, owner=owner) for owner in ("ann", "bob")]
    Admission.announce(line, lambda position: 10.0 * (position + 1))
    line.append(Job(spec, request, owner="cy"))
    Admission.announce(line, lambda position: 10.0 * (position + 1))
    for job in line:
        job.finish(JobCancelled("done looking"))
    bob_heard = [event for event in line[1].iter_events() if event.stage == "queued"]
    assert [(event.queue_position, event.queue_length) for event in bob_heard] == [(1, 2), (1, 3)]
    latest = bob_heard[-1]
    assert queued_text(latest.queue_position, latest.wait_s, latest.queue_length) == (
        "In line for a free slot: position 2 of 3 (all users' jobs; 1 ahead of yours), expected wait about 20 s "
        "(Cancel leaves the line)")
