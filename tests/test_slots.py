"""The slot manager and its worker processes, on CPU slots running tiny SDXL pipelines.

Two module-scoped managers keep the suite quick (a worker takes seconds to import torch):
``two_slots`` (two CPU workers, one per model) and ``one_slot`` (a short job timeout and a
small queue). Tests that break a worker wait for its restart before they return, so the
tests after them find every slot serving. Faults come from ``tests/faults.py`` through
``Settings.fault_hook``.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faults
import pytest
from PIL import Image

from studio import pngmeta
from studio.catalog import load_catalog
from studio.backend import SlotStatus
from studio.config import Settings
from studio.errors import JobCancelled, JobTimeout, ModelLoadFailed, OutOfMemory, QueueFull, WorkerFailed
from studio.schemas import GenerationRequest, JobResult
from studio.devices import preload_plan
from studio.jobs import Job
from studio.slots import SlotManager
from studio.workerslot import restart_delay
from tests.live import wait_until

BASE, TURBO, PIXART = "sdxl-base", "sdxl-turbo", "pixart-sigma"
# A job that would run for 30 s if nobody stopped it: sdxl-base's step limit, each step slowed down.
LONG = dict(prompt=faults.SLOW, steps=150)
START_S = 120  # generous: workers import torch on a shared, busy machine
ROOM_S = 3.0  # "within one step": one tiny step takes well under a tenth of this


def request_for(catalog, model: str, **fields):
    return catalog.resolve(GenerationRequest(model=model, **{"prompt": "a lighthouse at dusk", **fields}))


def submit(manager, catalog, model: str, **fields) -> Job:
    return manager.submit(*request_for(catalog, model, **fields))


def slot_status(manager, index: int) -> SlotStatus:
    return manager.status().slots[index]


def slot_holding(manager, model: str) -> int:
    return next(slot.index for slot in manager.status().slots if slot.model == model)


def slot_serving(manager, catalog, model: str) -> int:
    """Run a quick job of ``model``: the index of the slot that now holds it."""
    return submit(manager, catalog, model).wait(START_S).slot


def first_step(job: Job) -> None:
    """Block until the job reports its first denoising step (so it surely runs in its worker)."""
    for event in job.iter_events(timeout=START_S):
        if event.stage == "step":
            return
    raise AssertionError(f"{job} ended before its first step")


def seconds_left(manager, index: int, total: int) -> float:
    """How long the slot's running job has left, at the step rate the test itself sees."""
    first = wait_until(lambda: (lambda s: s if s.step >= 2 else None)(slot_status(manager, index)), START_S,
                       "the job's first steps", every_s=0.02)
    started = time.monotonic()
    last = wait_until(lambda: (lambda s: s if s.step >= first.step + 2 else None)(slot_status(manager, index)),
                      START_S, "two more steps", every_s=0.02)
    per_step = (time.monotonic() - started) / (last.step - first.step)
    return per_step * (total - last.step)


def wait_restarted(manager, index: int, old_pid: int) -> dict:
    return wait_until(
        lambda: (lambda s: s if s.alive and s.pid != old_pid else None)(slot_status(manager, index)),
        START_S, f"slot {index} to restart",
    )


def decoded(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").tobytes()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(BASE, TURBO)


@pytest.fixture(scope="module")
def two_slots(tiny_models, catalog):
    """Two CPU workers, sdxl-base preloaded on one and sdxl-turbo on the other."""
    settings = Settings(
        devices=["cpu", "cpu"], models_dir=tiny_models(BASE, TURBO), preload=[BASE, TURBO],
        fault_hook="faults:install", job_timeout_s=120,
    )
    manager = SlotManager(settings, catalog)
    manager.start()
    yield manager
    manager.shutdown()


@pytest.fixture(scope="module")
def one_slot(tiny_models, catalog, tmp_path_factory):
    """One CPU worker with sdxl-base, a queue of two, a RAM cache, quick restart back-off, and a
    crash switch: while ``manager.crash_marker`` exists, its worker dies at start-up. The manager
    reads ``settings.job_timeout_s`` at every check, so timeout tests shorten it for themselves."""
    marker = tmp_path_factory.mktemp("faults") / "crash-at-start"
    os.environ[faults.CRASH_MARKER_ENV] = str(marker)  # spawned workers inherit it
    os.environ[faults.HANG_LOAD_MARKER_ENV] = str(marker.with_name("hang-loads"))
    settings = Settings(
        devices=["cpu"], models_dir=tiny_models(BASE, TURBO), preload=[BASE],
        fault_hook="faults:crash_while_marked", max_queue=2, ram_cache_gb=0.5,
    )
    # A 3 s grace to honour a cancel: on a loaded machine one tiny step can take over a second.
    manager = SlotManager(settings, catalog, cancel_grace_s=3.0, restart_base_s=0.5, restart_cap_s=2.0)
    manager.crash_marker = marker
    manager.hang_load_marker = marker.with_name("hang-loads")
    manager.start()
    yield manager
    manager.shutdown()
    os.environ.pop(faults.CRASH_MARKER_ENV, None)
    os.environ.pop(faults.HANG_LOAD_MARKER_ENV, None)


# ---------------------------------------------------------------- pure parts: no processes


@pytest.fixture(scope="module")
def presets():
    return load_catalog()


def test_restart_delay_backs_off_to_a_cap():
    delays = [restart_delay(crashes, base_s=1.0, cap_s=60.0) for crashes in range(1, 10)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_parent_process_never_imports_torch():
    code = "import sys, studio.server, studio.slots, studio.worker; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


def test_submit_needs_a_running_manager(presets):
    manager = SlotManager(Settings(devices=["cpu"]), presets)
    with pytest.raises(WorkerFailed, match="not running"):
        submit(manager, presets, BASE)
    assert manager.status().slots[0].alive is False


# ---------------------------------------------------------------- start-up failures


def test_a_worker_dying_at_start_up_fails_start_with_its_slot_named(catalog):
    manager = SlotManager(Settings(devices=["cpu", "cpu"], fault_hook="faults:exit_on_slot_1"), catalog)
    with pytest.raises(WorkerFailed, match=r"slot 1 \(cpu\) failed to start: .*exited with code 3 before it was ready"):
        manager.start()
    assert not any(slot.alive for slot in manager.status().slots)


def test_a_worker_start_up_error_reaches_the_caller(catalog):
    manager = SlotManager(Settings(devices=["cpu"], fault_hook="faults:fail_at_start"), catalog)
    with pytest.raises(WorkerFailed, match=r"slot 0 \(cpu\) failed to start: RuntimeError: injected"):
        manager.start()


# ---------------------------------------------------------------- routing on real workers


def test_preloads_are_spread_and_warm(two_slots):
    slots = two_slots.status().slots
    assert sorted(slot.model for slot in slots) == [BASE, TURBO]
    assert all(slot.alive and slot.loads == 1 and slot.pid for slot in slots)


def test_alternating_models_cause_no_reloads(two_slots, catalog):
    loads_before = [slot.loads for slot in two_slots.status().slots]
    # Pairs of the two models, in alternating order, each pair running at once on the two slots.
    # (Ten jobs submitted in one go would be a different test: once one model's queue is longer
    # than a load takes, moving a slot over is the right call, and timing decides it.)
    jobs, results = [], []
    for pair in range(5):
        models = (BASE, TURBO) if pair % 2 == 0 else (TURBO, BASE)
        batch = [submit(two_slots, catalog, model, seed=pair * 2 + i) for i, model in enumerate(models)]
        jobs += batch
        results += [job.wait(START_S) for job in batch]
    assert [slot.loads for slot in two_slots.status().slots] == loads_before
    for job, result in zip(jobs, results):
        assert result.slot == slot_holding(two_slots, job.spec.id)
        assert not result.loaded_model


@pytest.fixture(scope="module")
def turbo_and_pixart(tiny_models):
    """Two CPU workers holding two models of different families (and speeds): sdxl-turbo and pixart-sigma."""
    models_dir = tiny_models(TURBO, PIXART)
    manager = SlotManager(Settings(devices=["cpu", "cpu"], models_dir=models_dir, preload=[TURBO, PIXART]),
                          load_catalog(models_dir))
    manager.start()
    yield manager
    manager.shutdown()


@pytest.mark.parametrize("owners", [1, 4], ids=["one owner", "an owner per client"])
def test_a_balanced_two_model_workload_from_four_clients_never_reloads(turbo_and_pixart, owners, caplog):
    # Four clients share twelve alternating jobs, each sending its next as soon as the last is back:
    # at times one model's jobs wait while the other's slot idles. Waiting is right: taking the idle
    # slot would evict the only copy of a model in use and the next job would load it back. With an
    # owner per client, fair share reorders the queue and a job that waited its round goes first:
    # still never a load (it waits for its model's slot like any other job).
    manager, catalog = turbo_and_pixart, turbo_and_pixart.catalog
    job = dict(width=64, height=64, steps=2)
    for model in (TURBO, PIXART):  # warm-up: each slot has run its model once (a never-used preload is free to take)
        submit(manager, catalog, model, **job).wait(START_S)
    loads_before = sum(slot.loads for slot in manager.status().slots)
    caplog.set_level("INFO", logger="studio.slots")
    for round_ in range(5):
        todo = [(TURBO, PIXART)[i % 2] for i in range(12)]
        lock = threading.Lock()

        def client(owner: str):
            while True:
                with lock:
                    if not todo:
                        return
                    model = todo.pop(0)
                manager.submit(*request_for(catalog, model, **job), owner=owner).wait(START_S)

        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(client, f"client-{index % owners}") for index in range(4)]:
                future.result()
        loads = sum(slot.loads for slot in manager.status().slots) - loads_before
        why = [record.getMessage() for record in caplog.records if " loads " in record.getMessage()]
        assert loads == 0, f"round {round_ + 1}: {loads} model loads: {why}"


def test_concurrent_jobs_get_their_own_images(two_slots, catalog):
    mix = [  # mixed models, seeds, sizes and batch sizes
        (BASE, 11, 64, 64, 1), (TURBO, 12, 64, 64, 2), (TURBO, 13, 96, 64, 1), (BASE, 14, 64, 96, 2),
        (BASE, 15, 64, 64, 1), (BASE, 16, 64, 64, 1), (TURBO, 17, 64, 64, 1), (BASE, 18, 96, 96, 1),
        (TURBO, 19, 64, 64, 1), (BASE, 20, 64, 64, 2), (TURBO, 21, 64, 96, 1), (BASE, 22, 64, 64, 1),
    ]
    requests = [
        request_for(catalog, model, prompt=f"picture number {seed}", seed=seed, width=w, height=h, num_images=n)
        for model, seed, w, h, n in mix
    ]
    barrier = threading.Barrier(4)

    def submit_share(share):
        barrier.wait()  # four threads submit at the same moment
        return [(request, two_slots.submit(*request)) for request in share]

    with ThreadPoolExecutor(4) as pool:
        submitted = [pair for share in pool.map(submit_share, [requests[i::4] for i in range(4)]) for pair in share]
    together = {id(request): job.wait(START_S) for request, job in submitted}

    for spec_and_request in requests:
        alone = two_slots.submit(*spec_and_request).wait(START_S)
        result: JobResult = together[id(spec_and_request)]
        request = spec_and_request[1]
        assert result.request.sampler  # the result names the sampler that ran; the rest is the request as sent
        assert result.request.model_copy(update={"sampler": request.sampler}) == request
        assert len(result.images) == request.num_images == len(alone.images)
        for png, png_alone, seed in zip(result.images, alone.images, request.seeds):
            meta = pngmeta.read(png)
            assert (meta["seed"], meta["prompt"], meta["model"]) == (seed, request.prompt, request.model)
            assert decoded(png) == decoded(png_alone)


def test_observers_see_every_outcome(two_slots, catalog):
    seen = []
    two_slots.add_observer(lambda job, outcome, duration: seen.append((job, outcome, duration)))
    ok = submit(two_slots, catalog, BASE)
    ok.wait(START_S)
    failing = submit(two_slots, catalog, BASE, prompt=faults.OOM)
    with pytest.raises(OutOfMemory):
        failing.wait(START_S)
    outcomes = {job.id: (outcome, duration) for job, outcome, duration in seen}
    assert isinstance(outcomes[ok.id][0], JobResult) and outcomes[ok.id][1] > 0
    assert isinstance(outcomes[failing.id][0], OutOfMemory)


# ---------------------------------------------------------------- cancel, OOM, crashes


def test_cancel_frees_a_busy_slot_within_a_step(two_slots, catalog):
    index = slot_serving(two_slots, catalog, BASE)
    failed_before = slot_status(two_slots, index).jobs_failed
    job = submit(two_slots, catalog, BASE, **LONG)
    first_step(job)
    assert slot_status(two_slots, index).job == job.id
    cancelled_at = time.monotonic()
    assert job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(0)  # the caller hears at once
    wait_until(lambda: not slot_status(two_slots, index).busy, ROOM_S, "the slot to free")
    assert time.monotonic() - cancelled_at < ROOM_S
    # The worker itself stopped the job (it was not killed) and serves the next one.
    assert slot_status(two_slots, index).jobs_failed == failed_before + 1
    assert submit(two_slots, catalog, BASE).wait(START_S).slot == index
    assert not job.cancel()  # already over


def test_cancel_of_a_queued_job_removes_it(one_slot, catalog):
    running = submit(one_slot, catalog, BASE, **LONG)
    queued = submit(one_slot, catalog, BASE)
    assert queued.queue_position == 0
    assert queued.cancel()
    assert one_slot.status().queue_depth == 0 and queued.queue_position is None
    with pytest.raises(JobCancelled):
        queued.wait(0)
    running.cancel()
    wait_until(lambda: not slot_status(one_slot, 0).busy, ROOM_S, "the slot to free")


@pytest.mark.parametrize("fault", [faults.OOM, faults.CUDA_OOM])
def test_an_out_of_memory_fails_only_its_job(two_slots, catalog, fault):
    index = slot_serving(two_slots, catalog, BASE)
    pid = slot_status(two_slots, index).pid
    with pytest.raises(OutOfMemory, match="out of memory") as caught:
        submit(two_slots, catalog, BASE, prompt=fault).wait(START_S)
    assert caught.value.status == 503
    status = slot_status(two_slots, index)
    assert status.pid == pid and status.alive
    assert status.model is None  # the engine dropped the pipeline to start clean
    assert submit(two_slots, catalog, BASE, seed=5).wait(START_S).images


def test_kill_9_fails_only_the_running_job_and_the_slot_comes_back(two_slots, catalog):
    index = slot_serving(two_slots, catalog, BASE)
    other = slot_serving(two_slots, catalog, TURBO)
    other_before = slot_status(two_slots, other)
    victim = submit(two_slots, catalog, BASE, **LONG)
    first_step(victim)
    bystanders = [submit(two_slots, catalog, TURBO, seed=i) for i in range(4)]
    old_pid = slot_status(two_slots, index).pid
    os.kill(old_pid, signal.SIGKILL)

    with pytest.raises(WorkerFailed, match=rf"slot {index} \(cpu\) failed .*killed by SIGKILL") as caught:
        victim.wait(START_S)
    assert caught.value.status == 503
    assert all(job.wait(START_S).slot == other for job in bystanders)
    status = wait_restarted(two_slots, index, old_pid)
    assert status.restarts == 1 and status.model == preload_plan([BASE, TURBO], 2)[index][0]
    assert slot_status(two_slots, other).pid == other_before.pid
    assert slot_status(two_slots, other).jobs_failed == other_before.jobs_failed
    # The restarted slot serves its model (so may the other slot, when earlier jobs left the same one there).
    holders = {index} | ({other} if slot_status(two_slots, other).model == status.model else set())
    assert submit(two_slots, catalog, status.model).wait(START_S).slot in holders


# ---------------------------------------------------------------- queue limit, timeouts, events


def test_a_full_queue_refuses_with_the_limit(one_slot, catalog, monkeypatch):
    monkeypatch.setattr(one_slot.settings, "queue_wait_s", 0)  # no waiting room: refused at once
    seen = []
    one_slot.add_observer(lambda job, outcome, duration: seen.append(outcome))
    running = submit(one_slot, catalog, BASE, **LONG)
    try:
        waiting = [submit(one_slot, catalog, BASE, seed=i) for i in range(2)]
        expected_s = seconds_left(one_slot, 0, LONG["steps"])
        with pytest.raises(QueueFull, match="limit 2") as caught:
            submit(one_slot, catalog, BASE)
        assert caught.value.status == 429
        # The retry hint is when the running job should end, from its live progress.
        assert expected_s / 2 < caught.value.retry_after_s <= expected_s * 2 + 1
        assert f"try again in about {caught.value.retry_after_s} s" in caught.value.message
        assert seen == [caught.value]  # observers (metrics) count a refusal from any face
        assert [job.queue_position for job in waiting] == [0, 1]
    finally:
        running.cancel()
    assert all(job.wait(START_S).images for job in waiting)


def test_past_the_limit_jobs_wait_their_turn_for_a_place(one_slot, catalog, monkeypatch):
    """A client told to retry finds a place: jobs over --max-queue wait (first come, first served)
    in a waiting room as large as the queue; only past that is a job refused at once."""
    monkeypatch.setattr(one_slot.settings, "queue_wait_s", START_S)
    ended = []
    one_slot.add_observer(lambda job, outcome, duration: ended.append(job))
    running = submit(one_slot, catalog, BASE, **LONG)
    try:
        queued = [submit(one_slot, catalog, BASE, seed=i) for i in range(2)]
        first_step(running)
        waiting = [submit(one_slot, catalog, BASE, seed=10 + i) for i in range(2)]
        assert [job.queue_position for job in queued + waiting] == [0, 1, 2, 3]
        assert (one_slot.status().queue_depth, one_slot.status().waiting_room) == (2, 2)
        with pytest.raises(QueueFull, match="limit 2.* and 2 more wait for a place"):
            submit(one_slot, catalog, BASE)
    finally:
        running.cancel()
    assert all(job.wait(START_S).images for job in queued + waiting)
    assert [job for job in ended if job in queued + waiting] == queued + waiting  # served in the order they came


def test_a_job_that_finds_no_place_in_time_is_told_when_to_retry(one_slot, catalog, monkeypatch):
    monkeypatch.setattr(one_slot.settings, "queue_wait_s", 0.5)
    running = submit(one_slot, catalog, BASE, **LONG)
    try:
        queued = [submit(one_slot, catalog, BASE, seed=i) for i in range(2)]
        expected_s = seconds_left(one_slot, 0, LONG["steps"])  # when the running job ends and a place frees
        late = submit(one_slot, catalog, BASE)  # accepted into the waiting room ...
        with pytest.raises(QueueFull, match="limit 2") as caught:
            late.wait(START_S)  # ... and refused once its wait is over, still without a place
        assert caught.value.status == 429
        assert expected_s / 2 < caught.value.retry_after_s <= expected_s * 2 + 1
        assert one_slot.status().waiting_room == 0
    finally:
        running.cancel()
    assert all(job.wait(START_S).images for job in queued)


def test_events_follow_a_job_from_queue_to_encoding(one_slot, catalog):
    async def follow(job):
        events = [event async for event in job.events()]
        return events, await job.result()

    async def scenario():
        first = submit(one_slot, catalog, TURBO, steps=3)  # not resident: a load first
        second = submit(one_slot, catalog, TURBO)
        return await asyncio.gather(follow(first), follow(second))

    (first_events, first_result), (second_events, second_result) = asyncio.run(scenario())
    stages = [event.stage for event in first_events]
    assert [stage for stage in stages if stage != "step"] == ["loading", "generating", "encoding"]
    assert stages.index("generating") < stages.index("step") and stages[-2] == "step"
    # fast steps are reported at most every STEP_REPORT_S, but the first and the last always are
    steps = [event.step for event in first_events if event.stage == "step"]
    assert steps[0] == 1 and steps[-1] == 3 and steps == sorted(set(steps))
    assert all(event.slot == 0 for event in first_events)
    assert first_result.loaded_model and not second_result.loaded_model
    assert second_events[0].stage == "queued" and second_events[0].queue_position == 0
    assert second_events[0].wait_s >= 0  # when it should start, for the UI's status line
    assert second_events[-1].stage == "encoding"


def test_a_swap_back_comes_from_the_ram_cache(one_slot, catalog):
    submit(one_slot, catalog, TURBO).wait(START_S)
    before = slot_status(one_slot, 0)
    assert before.model == TURBO and BASE in before.cached
    assert submit(one_slot, catalog, BASE).wait(START_S).loaded_model
    after = slot_status(one_slot, 0)
    assert (after.loads, after.cache_hits) == (before.loads, before.cache_hits + 1)
    assert after.model == BASE and TURBO in after.cached


def test_a_terminal_s_signals_to_the_process_group_leave_workers_to_the_manager(one_slot, catalog):
    """Ctrl+C or a service manager's SIGTERM hits every process of the group: the workers go on (their
    running job too) until the server's own shutdown stops them, instead of dying as a crash to restart."""
    before = slot_status(one_slot, 0)
    job = submit(one_slot, catalog, BASE, steps=8)
    first_step(job)
    for signum in (signal.SIGINT, signal.SIGTERM):
        os.kill(before.pid, signum)
    assert job.wait(START_S).images
    time.sleep(0.5)  # a worker that died of either signal would be marked dead by now
    after = slot_status(one_slot, 0)
    assert (after.pid, after.alive, after.restarts) == (before.pid, True, before.restarts)


def test_a_job_past_its_timeout_is_cancelled(one_slot, catalog, monkeypatch):
    monkeypatch.setattr(one_slot.settings, "job_timeout_s", 2)
    pid = slot_status(one_slot, 0).pid
    job = submit(one_slot, catalog, BASE, **LONG)
    with pytest.raises(JobTimeout, match="longer than 2 s") as caught:
        job.wait(START_S)
    assert caught.value.status == 504
    wait_until(lambda: not slot_status(one_slot, 0).busy, ROOM_S, "the slot to free")
    assert slot_status(one_slot, 0).pid == pid  # the worker honoured the cancel


def test_a_stuck_model_load_fails_its_job_and_the_worker_is_replaced(one_slot, catalog, monkeypatch):
    """A load never reports a step, so no cancel reaches it and --job-timeout (which starts after it)
    never fires: --load-timeout ends it, and the slot comes back with a new worker."""
    monkeypatch.setattr(one_slot.settings, "load_timeout_s", 2)
    old_pid = slot_status(one_slot, 0).pid
    model = TURBO if slot_status(one_slot, 0).model != TURBO else BASE
    one_slot.hang_load_marker.touch()
    try:
        with pytest.raises(ModelLoadFailed, match=r"took longer than 2 s \(--load-timeout\)") as caught:
            submit(one_slot, catalog, model).wait(START_S)
        assert caught.value.status == 503
    finally:
        one_slot.hang_load_marker.unlink()
    status = wait_restarted(one_slot, 0, old_pid)
    assert status.crashes_in_row == 0  # our own kill is not a crash
    assert submit(one_slot, catalog, model).wait(START_S).images


def test_a_worker_that_ignores_its_timeout_is_killed_and_replaced(one_slot, catalog, monkeypatch):
    monkeypatch.setattr(one_slot.settings, "job_timeout_s", 2)
    old_pid = slot_status(one_slot, 0).pid
    with pytest.raises(JobTimeout):
        submit(one_slot, catalog, BASE, prompt=faults.HANG).wait(START_S)
    status = wait_restarted(one_slot, 0, old_pid)
    monkeypatch.undo()  # the next job may pay for a cold load
    assert status.crashes_in_row == 0  # our own kill is not a crash
    assert submit(one_slot, catalog, BASE).wait(START_S).images


# ---------------------------------------------------------------- crash loops


def test_jobs_behind_one_that_crashes_its_worker_still_run(one_slot, catalog):
    for _ in range(2):  # twice in a row: job crashes are not start-up failures, the slot is not "down"
        crasher = submit(one_slot, catalog, BASE, prompt=faults.SEGFAULT)
        behind = submit(one_slot, catalog, BASE)
        with pytest.raises(WorkerFailed, match="killed by SIGSEGV"):
            crasher.wait(START_S)
        assert behind.wait(START_S).images


def test_a_crash_loop_backs_off_and_recovers(one_slot, catalog):
    old_pid = slot_status(one_slot, 0).pid
    one_slot.crash_marker.touch()
    try:
        with pytest.raises(WorkerFailed, match="killed by SIGSEGV"):
            submit(one_slot, catalog, BASE, prompt=faults.SEGFAULT).wait(START_S)
        wait_until(lambda: slot_status(one_slot, 0).crashes_in_row >= 4, 30, "four crashes in a row")
        status = slot_status(one_slot, 0)
        assert not status.alive and "exited with code 3 before it was ready" in status.last_error
        # Restarts now come 2 s apart (the cap), not back to back.
        restarts = status.restarts
        time.sleep(1.0)
        assert slot_status(one_slot, 0).restarts <= restarts + 1
        # With every slot down a job is refused (at submit, or when the restart it waited for dies).
        with pytest.raises(WorkerFailed, match=r"no slot can run jobs.*slot 0 \(cpu\).*before it was ready"):
            submit(one_slot, catalog, BASE).wait(START_S)
    finally:
        one_slot.crash_marker.unlink()
    status = wait_restarted(one_slot, 0, old_pid)
    assert status.model is None  # a restart that failed to come up drops the preload
    assert submit(one_slot, catalog, BASE).wait(START_S).images


# ---------------------------------------------------------------- reaping and shutdown


def test_two_threads_reaping_one_worker_both_see_its_exit_and_nobody_signals_it(monkeypatch):
    import multiprocessing

    from studio.workerslot import kill, reap

    signals = []
    real_kill = os.kill
    monkeypatch.setattr(os, "kill", lambda pid, sig: (signals.append((pid, sig)), real_kill(pid, sig)))
    context = multiprocessing.get_context("fork")
    for _ in range(20):  # the race this guards against lost one shutdown in three
        process, lock = context.Process(target=time.sleep, args=(0.05,)), threading.Lock()
        process.start()
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(reap(process, lock, 10))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert codes == [0, 0]
        assert kill(process, lock) is False  # reaped: its pid is no longer ours to signal
    assert signals == []


def test_a_normal_shutdown_kills_no_worker(tiny_models, catalog, caplog):
    manager = SlotManager(Settings(devices=["cpu", "cpu"], models_dir=tiny_models(BASE, TURBO)), catalog)
    manager.start()
    processes = [slot.process for slot in manager._slots]
    manager.shutdown()
    assert "did not exit" not in caplog.text
    assert [process.exitcode for process in processes] == [0, 0]  # they left by themselves, not by SIGKILL


def test_a_burst_of_one_model_uses_both_slots_and_the_limit_counts_only_the_backlog(tiny_models, catalog):
    """Slots holding [sdxl-base, sdxl-turbo], 40 sdxl-turbo jobs at once, --max-queue 2: one runs
    where its model is, one takes the other slot (waiting for the busy one would be quicker for it, but
    no job waits by choice while others wait for a place), two wait: 4 accepted. Holding the second job
    for the busy slot let only 3 in."""
    settings = Settings(devices=["cpu", "cpu"], models_dir=tiny_models(BASE, TURBO), preload=[BASE, TURBO],
                        max_queue=2)
    manager = SlotManager(settings, catalog)
    manager.start()
    try:
        accepted, refused = [], 0
        for seed in range(40):
            try:
                accepted.append(submit(manager, catalog, TURBO, seed=seed, steps=2))
            except QueueFull:
                refused += 1
        assert len(accepted) >= 4 and len(accepted) + refused == 40
        assert all(job.wait(START_S).images for job in accepted)
        assert {job.slot for job in accepted} == {0, 1}
    finally:
        manager.shutdown()
