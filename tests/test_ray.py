"""``--backend ray``, end to end: the real app in front of a local Ray cluster (started by the app
on 127.0.0.1) whose Serve deployment runs two CPU replicas with tiny SDXL pipelines.

One app, hence one Ray and one Serve, for the whole module (Ray takes tens of seconds to start).
Faults come from ``tests/faults.py``, as for the local backend: the replicas find it because Ray's
workers inherit the ``PYTHONPATH`` this module sets before Ray starts.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="the Ray tests need ray[serve] (tests/requirements.txt)")

import faults  # noqa: E402

from studio.config import Settings  # noqa: E402
from studio.errors import JobCancelled, ModelLoadFailed, QueueFull, WorkerFailed  # noqa: E402
from studio.schemas import GenerationRequest  # noqa: E402
from studio.server import create_app  # noqa: E402
from tests.live import ROOT, metric, serve_app, wait_until  # noqa: E402

pytestmark = pytest.mark.ray

BASE, TURBO = "sdxl-base", "sdxl-turbo"
JOB_TIMEOUT_S = 20.0  # LONG runs for 30 s at least: past this it is cancelled with JobTimeout
SHORT_TIMEOUT_S = 4.0  # the timeout test's own limit (it need not wait 20 s to see one)
LONG = dict(prompt=faults.SLOW + " a long job", steps=150)
START_S = 240  # Ray, Serve and two replicas importing torch on a shared, busy machine


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path + (os.pathsep + saved if saved else "")
    hang_load_marker = tmp_path_factory.mktemp("faults") / "hang-loads"  # the replicas inherit the variable
    os.environ[faults.HANG_LOAD_MARKER_ENV] = str(hang_load_marker)
    settings = Settings(
        host="127.0.0.1", backend="ray", replicas=2, models_dir=tiny_models(BASE, TURBO), max_queue=4,
        job_timeout_s=JOB_TIMEOUT_S, outputs_dir=tmp_path_factory.mktemp("outputs"), fault_hook="faults:install",
    )
    application = create_app(settings)
    application.state.backend.start = in_a_passing_thread(application.state.backend.start)
    application.state.hang_load_marker = hang_load_marker
    try:
        with serve_app(application, startup_timeout_s=START_S) as base_url:
            application.state.base_url = base_url
            yield application
    finally:
        os.environ.pop(faults.HANG_LOAD_MARKER_ENV, None)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def in_a_passing_thread(start):
    """``start`` on a thread that ends with it, as a server's idle pool thread does sooner or later:
    the local Ray that ``start`` brings up must outlive that thread."""

    def run() -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="passing-start") as pool:
            pool.submit(start).result()

    return run


@pytest.fixture
def http(app):
    with httpx.Client(base_url=app.state.base_url, timeout=120) as session:
        yield session


def health(http) -> dict:
    return http.get("/health").json()


def replica_pid(http, slot: int) -> int | None:
    """The slot's worker pid, once its replica has reported it."""
    return {line["index"]: line for line in health(http)["slots"]}[slot].get("pid") or None


def proc_stat(pid: int) -> tuple[str, str, int]:
    """A process's (name, state, parent pid) from /proc; state Z: dead, not yet reaped."""
    text = Path(f"/proc/{pid}/stat").read_text()
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return text[text.index("(") + 1:text.rindex(")")], state, int(ppid)


def ray_daemons() -> dict[str, str]:
    """The GCS and raylet this process started: name -> state."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            name, state, ppid = proc_stat(int(entry.name))
        except (ValueError, OSError):
            continue  # not a process, or it ended meanwhile
        if ppid == os.getpid() and name in ("gcs_server", "raylet"):
            found[name] = state
    return found


def is_our_replica(pid: int) -> bool:
    """``pid`` is a Serve replica of this app, a worker of the raylet this process started."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
        raylet = proc_stat(proc_stat(pid)[2])
    except OSError:
        return False
    return title.startswith(b"ray::ServeReplica:studio:EngineReplica") and raylet[0] == "raylet" \
        and raylet[2] == os.getpid()


def submit(app, model: str, **fields):
    spec, request = app.state.catalog.resolve(GenerationRequest(model=model, **{"prompt": "a lighthouse", **fields}))
    return app.state.backend.submit(spec, request)


def running_step(job, at_least: int = 2):
    """Wait until ``job`` has made ``at_least`` steps; returns its slot."""
    for event in job.iter_events(START_S):
        if event.stage == "step" and event.step >= at_least:
            return event.slot
    raise AssertionError(f"the job ended before step {at_least}")


def jobs_done(http) -> int:
    return sum(slot["jobs_done"] for slot in health(http)["slots"])


def replicas_idle(http) -> bool:
    status = health(http)
    return len(status["slots"]) == 2 and all(s["alive"] and not s["busy"] for s in status["slots"])


def test_before_it_starts_the_backend_lists_the_planned_replicas(tiny_catalog):
    from studio.ray_backend import RayBackend

    status = RayBackend(Settings(backend="ray", max_replicas=3), tiny_catalog(TURBO)).status()
    assert [(slot.state, slot.alive) for slot in status.slots] == [("starting", False)] * 3  # the UI's concurrency
    assert not status.accepting


def test_held_jobs_go_to_serve_one_per_free_place_in_fair_share_order():
    """``RayQueue`` alone: a replica's worth of jobs goes out at once, the rest stay in the app; a freed
    place goes to the owner with the least service (first come, first served without fair share);
    --max-running-per-user holds an owner's job back while another's goes; autoscaling sends up to
    --max-replicas, so that Serve sees the demand."""
    from studio.catalog import load_catalog
    from studio.jobs import Job
    from studio.rayqueue import RayQueue

    spec = load_catalog().get(TURBO)
    request = spec.check(GenerationRequest(model=TURBO, prompt="a lighthouse"))
    for fair in (True, False):
        queue = RayQueue(Settings(backend="ray", fair_share=fair, max_running_per_user=2))
        flood = [Job(spec, request, owner="flood", seq=seq) for seq in range(4)]
        late = Job(spec, request, owner="late", seq=9)
        for job in flood:
            queue.hold(job)
        assert queue.release(queue.places(2), 0.0) == flood[:2] and queue.held == flood[2:]
        queue.hold(late)
        assert queue.release(2, 1.0) == []  # both places taken
        queue.ended(flood[0], 2.0)  # flood's first job ran 2 s
        assert queue.release(2, 2.0) == ([late] if fair else [flood[2]])
    queue.ended(flood[1], 3.0)  # first come, first served: two places free, the next two in arrival order
    queue.ended(flood[2], 3.0)
    assert queue.release(2, 3.0) == [flood[3], late]
    queue = RayQueue(Settings(backend="ray", max_running_per_user=1))
    ann, bob = (Job(spec, request, owner=owner) for owner in ("ann", "bob"))
    for job in (Job(spec, request, owner="ann"), ann, bob):
        queue.hold(job)
    assert [job.owner for job in queue.release(3, 0.0)] == ["ann", "bob"] and queue.held == [ann]
    assert RayQueue(Settings(backend="ray", min_replicas=1, max_replicas=4)).places(1) == 4


def test_a_held_job_lets_one_whose_model_an_idle_replica_holds_go_first():
    """Model affinity within fair share's choice on Ray: ann's job is first in fair order, but only the busy
    replica holds its model; bob's job, whose model the idle replica holds, goes (no load), and ann's waits
    for her model's replica."""
    from studio.catalog import load_catalog
    from studio.jobs import Job
    from studio.rayqueue import RayQueue

    catalog = load_catalog()
    base, turbo = ((catalog.get(model), catalog.get(model).check(GenerationRequest(model=model, prompt="x")))
                   for model in (BASE, TURBO))
    queue = RayQueue(Settings(backend="ray"))
    queue.resident = {0: BASE, 1: TURBO}
    running = Job(*turbo, owner="cy")
    queue.hold(running)
    assert queue.release(2, 0.0) == [running]
    running.slot = 1  # the replica holding Turbo took it
    ann, bob = Job(*turbo, owner="ann", seq=1), Job(*base, owner="bob", seq=2)
    queue.hold(ann)
    queue.hold(bob)
    assert queue.line(0.0) == [ann, bob]  # ann first in fair order ...
    assert queue.release(2, 0.0) == [bob]  # ... but bob's job needs no load on the idle replica
    queue.ended(running, 5.0)
    assert queue.release(2, 5.0) == [ann]  # her model's replica freed


# ---------------------------------------------------------------- the faces


def test_ray_outlives_the_thread_that_started_it(app):
    daemons = ray_daemons()  # a killed one stays a zombie (Z) until Ray reaps it, or is gone
    assert set(daemons) == {"gcs_server", "raylet"} and "Z" not in daemons.values(), daemons


def test_rest_generates_through_ray(http):
    response = http.post("/v1/images/generations", json={"model": TURBO, "prompt": "a red fox", "n": 2, "seed": 7})
    assert response.status_code == 200, response.text[:500]
    images = [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in response.json()["data"]]
    assert len(images) == 2 and images[0].size == (images[0].width, images[0].height) != (0, 0)
    status = health(http)
    assert status["status"] == "ok" and len(status["slots"]) == 2
    assert all(slot["device"].endswith("/cpu") and slot["alive"] and slot["pid"] for slot in status["slots"])


def test_gradio_client_generates_through_ray(app):
    from gradio_client import Client

    client = Client(app.state.base_url + "/", verbose=False, download_files=True)
    files, params = client.predict(prompt="a lighthouse", model=TURBO, seed=3, steps=1, api_name="/generate")
    assert len(files) == 1 and params["seed"] == 3
    assert len(client.predict(api_name="/status")["slots"]) == 2


def test_a_bad_request_is_a_400_before_anything_reaches_ray(http):
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    before = [(slot["jobs_done"], slot["jobs_failed"]) for slot in health(http)["slots"]]
    response = http.post("/v1/images/generations", json={"model": TURBO, "prompt": "x", "steps": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "steps"
    response = http.post("/v1/images/generations", json={"model": BASE, "prompt": "x", "size": "100x100"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "size"
    time.sleep(2.5)  # a job that reached a replica would be in its next reports by now
    assert [(slot["jobs_done"], slot["jobs_failed"]) for slot in health(http)["slots"]] == before


# ---------------------------------------------------------------- affinity


def test_alternating_models_stay_on_the_replicas_that_hold_them(app, http):
    for model in (BASE, TURBO):  # warm-up: the empty replica takes the model nobody holds
        assert submit(app, model, steps=1).wait(START_S).images
    wait_until(lambda: sorted(slot["model"] or "" for slot in health(http)["slots"]) == [BASE, TURBO],
             30, "one model on each replica")
    loads = sum(slot["loads"] + slot["cache_hits"] for slot in health(http)["slots"])
    done = jobs_done(http)
    slots = {BASE: set(), TURBO: set()}
    for index in range(6):
        model = (BASE, TURBO)[index % 2]
        slots[model].add(submit(app, model, steps=1, seed=index).wait(START_S).slot)
    wait_until(lambda: jobs_done(http) >= done + 6, 30, "the replicas to report their jobs")
    assert sum(slot["loads"] + slot["cache_hits"] for slot in health(http)["slots"]) == loads  # no swaps
    assert len(slots[BASE]) == len(slots[TURBO]) == 1 and slots[BASE] != slots[TURBO]


# ---------------------------------------------------------------- cancel, timeout, disconnect


def test_cancel_stops_the_job_at_its_next_step(app, http):
    job = submit(app, BASE, **LONG)
    running_step(job)
    started = time.monotonic()
    assert job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(5)
    wait_until(lambda: replicas_idle(http), 30, "the replica to free")
    assert time.monotonic() - started < 30  # the whole job would have taken at least 30 s


def test_a_closed_connection_cancels_the_job(app, http):
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    cancelled_before = metric(http, "studio_jobs_total", model=BASE, outcome="cancelled")
    body = {"model": BASE, "prompt": LONG["prompt"], "steps": LONG["steps"]}
    sender = threading.Thread(target=lambda: _post_and_hang_up(app.state.base_url, body), daemon=True)
    sender.start()
    wait_until(lambda: any(slot["step"] >= 2 for slot in health(http)["slots"]), START_S, "the job's first steps")
    sender.join(60)
    # Left alone, the job would run into its 20 s timeout (an outcome "timeout"); hung up on, it is cancelled.
    wait_until(lambda: metric(http, "studio_jobs_total", model=BASE, outcome="cancelled") == cancelled_before + 1,
               8, "the job to be cancelled after the client left")
    wait_until(lambda: replicas_idle(http), 30, "the replica to free after the client left")


def _post_and_hang_up(base_url: str, body: dict) -> None:
    try:
        httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=httpx.Timeout(60, read=8))
    except httpx.TimeoutException:
        pass  # leaving closes the connection: what a client that gives up does


def test_an_out_of_memory_in_a_replica_is_a_503_and_the_replica_serves_on(http):
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    response = http.post("/v1/images/generations", json={"model": TURBO, "prompt": faults.OOM, "steps": 1})
    assert response.status_code == 503 and "out of memory" in response.json()["error"]["message"]
    assert http.post("/v1/images/generations", json={"model": TURBO, "prompt": "a fox", "steps": 1}).status_code == 200


def test_a_job_past_its_timeout_fails_with_504(app, http, monkeypatch):
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    monkeypatch.setattr(app.state.settings, "job_timeout_s", SHORT_TIMEOUT_S)  # read as each job is sent
    response = http.post("/v1/images/generations", json={"model": BASE, "prompt": LONG["prompt"], "steps": 150})
    assert response.status_code == 504 and "longer than 4 s" in response.json()["error"]["message"]
    wait_until(lambda: replicas_idle(http), 30, "the replica to free")


def test_a_full_queue_is_a_429_whose_retry_after_is_the_running_jobs_pace(app, http):
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    running = [submit(app, BASE, **LONG) for _ in range(2)]  # one replica each (Turbo allows 4 steps at most)
    for job in running:
        running_step(job)
    waiting = [submit(app, TURBO, steps=1) for _ in range(app.state.settings.max_queue)]
    try:
        response = http.post("/v1/images/generations", json={"model": TURBO, "prompt": "x", "steps": 1})
        steps = [slot["step"] for slot in health(http)["slots"]]
    finally:
        for job in waiting + running:
            job.cancel()
    assert response.status_code == 429, response.text[:300]
    retry_s = int(response.headers["Retry-After"])
    # The first job to end frees a place; each step takes SLOW_STEP_S at least (not the 5 s of a guess).
    assert faults.SLOW_STEP_S * (LONG["steps"] - max(steps)) - 1 <= retry_s <= 300, (retry_s, steps)
    assert f"try again in about {retry_s} s" in response.json()["error"]["message"]
    wait_until(lambda: replicas_idle(http), 30, "the replicas to free")


def test_per_owner_limits_hold_on_ray(app, http, monkeypatch):
    """--max-running-per-user keeps ann's second job in the app while a replica is free for bob's;
    --max-queue-per-user refuses her third with her own count (the same limits as the local backend)."""
    from studio.errors import QueueFull

    monkeypatch.setattr(app.state.settings, "max_queue_per_user", 1)
    monkeypatch.setattr(app.state.settings, "max_running_per_user", 1)
    monkeypatch.setattr(app.state.settings, "queue_wait_s", 0)  # else her third waits in the room for a place
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    spec, request = app.state.catalog.resolve(GenerationRequest(model=BASE, **LONG))
    jobs = [app.state.backend.submit(spec, request, "ann")]
    try:
        running_step(jobs[0])
        jobs.append(app.state.backend.submit(spec, request, "ann"))  # held: her one job running is her limit
        with pytest.raises(QueueFull, match=r"ann has 1 job queued \(--max-queue-per-user 1\)") as refused:
            app.state.backend.submit(spec, request, "ann")
        assert refused.value.status == 429 and 1 <= refused.value.retry_after_s <= 300
        jobs.append(app.state.backend.submit(spec, request, "bob"))
        assert running_step(jobs[-1]) is not None  # bob's job runs on the other replica at once
        owners = {owner["owner"]: owner for owner in health(http)["owners"]}
        assert (owners["ann"]["running"], owners["ann"]["queued"], owners["bob"]["running"]) == (1, 1, 1)
        # One count with her jobs waiting for downloads: the download phase's rule is joined to Ray's.
        assert app.state.backend.owner_limit.joined == [app.state.backend.backend.owner_limit]
    finally:
        for job in jobs:
            job.cancel()
    wait_until(lambda: replicas_idle(http), 30, "the replicas to free")


def test_fair_share_on_ray_a_late_owner_waits_one_round_not_the_whole_flood(app, http, monkeypatch):
    """Jobs wait in the app while both replicas are busy, and the next goes out in fair-share order: the
    late owner's job is sent when a replica frees (at most one flood job, for the other replica, goes
    before it); first come, first served (--no-fair-share), the whole rest of the flood goes first."""
    monkeypatch.setattr(app.state.settings, "max_queue", 32)
    ray_queue = app.state.backend.backend.queue
    sent: list = []
    started = ray_queue.turns.started

    def recording(job, queue):
        sent.append(job)
        started(job, queue)

    monkeypatch.setattr(ray_queue.turns, "started", recording)
    spec, request = app.state.catalog.resolve(GenerationRequest(model=TURBO, prompt=faults.SLOW, steps=4))
    for fair in (True, False):
        monkeypatch.setattr(app.state.settings, "fair_share", fair)
        wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
        sent.clear()
        flood = [app.state.backend.submit(spec, request, "flood") for _ in range(6)]
        time.sleep(0.5)
        arrived = len(sent)  # the flood's jobs sent before the late one came: one per replica
        late = app.state.backend.submit(spec, request, "late")
        assert late.queue_position is not None  # it waits in line in the app, not at a replica
        for job in [*flood, late]:
            assert job.wait(START_S).images
        passed = sent.index(late) - arrived
        assert arrived >= 2 and len(flood) - arrived >= 3, arrived  # one job per replica, the rest held
        assert passed <= 1 if fair else passed == len(flood) - arrived, (fair, arrived, passed)


# ---------------------------------------------------------------- admission: the local backend's policy


def busy_with_a_full_queue(app) -> tuple[list, list]:
    """Both replicas running long jobs (past their first steps) and --max-queue short jobs behind them."""
    running = [submit(app, BASE, **LONG) for _ in range(2)]
    for job in running:
        running_step(job)
    return running, [submit(app, TURBO, steps=1, seed=index) for index in range(app.state.settings.max_queue)]


def test_past_the_queue_limit_a_job_waits_queue_wait_for_a_place(app, http, monkeypatch):
    """--queue-wait on Ray as on the local backend: a job over --max-queue waits in the app (not sent
    to Serve) for a place; it gets the first that frees, and one that finds none in time is refused
    with the running jobs' pace as its Retry-After. Queued jobs hear when they should start."""
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    monkeypatch.setattr(app.state.settings, "queue_wait_s", 1.5)
    running, queued = busy_with_a_full_queue(app)
    try:
        started = time.monotonic()
        late = submit(app, TURBO, steps=1)  # no 429 at once: it waits for a place ...
        with pytest.raises(QueueFull, match=r"limit 4") as caught:
            late.wait(60)  # ... and none frees within its wait
        assert time.monotonic() - started >= 1.5 and caught.value.status == 429
        steps = [slot["step"] for slot in health(http)["slots"]]
        assert faults.SLOW_STEP_S * (LONG["steps"] - max(steps)) - 1 <= caught.value.retry_after_s <= 300
        first = next(queued[-1].iter_events(5))
        assert first.stage == "queued" and first.queue_position == 3 and first.wait_s > 0

        monkeypatch.setattr(app.state.settings, "queue_wait_s", 120)
        waiting = submit(app, TURBO, steps=1, seed=99)
        assert health(http)["waiting_room"] == 1
        assert waiting.queue_position == 4 and next(waiting.iter_events(5)).wait_s > 0
        running[0].cancel()  # a place frees: the waiting job takes it, and runs
        assert waiting.wait(START_S).images
        assert health(http)["waiting_room"] == 0
    finally:
        for job in queued + running:
            job.cancel()
    wait_until(lambda: replicas_idle(http), 30, "the replicas to free")


def test_a_stuck_model_load_fails_its_job_and_serve_replaces_the_replica(app, http, monkeypatch):
    """--load-timeout on Ray: a load never reports a step, so no cancel reaches it (and --job-timeout,
    which starts after it, never fires); past the limit its job fails and its replica is killed."""
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    held = [slot["model"] for slot in health(http)["slots"]]
    model = next((model for model in (TURBO, BASE) if model not in held), TURBO)
    if model in held:  # an out of memory unloads it (Serve still routes the model there): the next job loads
        http.post("/v1/images/generations", json={"model": model, "prompt": faults.OOM, "steps": 1})
        wait_until(lambda: model not in [slot["model"] for slot in health(http)["slots"]], 30, "the unload")
    pids = {slot["index"]: slot["pid"] for slot in health(http)["slots"]}
    monkeypatch.setattr(app.state.settings, "load_timeout_s", 3)
    app.state.hang_load_marker.touch()
    try:
        job = submit(app, model, steps=1)
        with pytest.raises(ModelLoadFailed, match=r"took longer than 3 s \(--load-timeout\)") as caught:
            job.wait(START_S)
        assert caught.value.status == 503 and "its replica is replaced" in caught.value.message
    finally:
        app.state.hang_load_marker.unlink()
    stuck = pids[job.slot]
    wait_until(lambda: replicas_idle(http) and stuck not in [slot["pid"] for slot in health(http)["slots"]],
               START_S, "Serve to replace the stuck replica")
    assert not is_our_replica(stuck)
    assert submit(app, model, steps=1).wait(START_S).images


# ---------------------------------------------------------------- a replica dies


def test_a_killed_replica_fails_only_its_job_and_serve_replaces_it(app, http):
    wait_until(lambda: replicas_idle(http), START_S, "idle replicas")
    victim = submit(app, BASE, **LONG)
    slot = running_step(victim)
    other = submit(app, TURBO, steps=4, num_images=2)
    pid = wait_until(lambda: replica_pid(http, slot), START_S, "the replica's pid")
    assert is_our_replica(pid)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerFailed) as caught:
        victim.wait(60)
    assert caught.value.status == 503
    assert other.wait(START_S).images  # the other replica's job is untouched
    wait_until(lambda: replicas_idle(http) and pid not in [s["pid"] for s in health(http)["slots"]],
             START_S, "Serve to replace the replica")
    assert submit(app, TURBO, steps=1).wait(START_S).images


@pytest.mark.parametrize("environ, token_in_home, expected", [
    ({}, False, False),  # no token: join as Ray would
    ({}, True, True),  # `ray start --head` turned token auth on because ~/.ray/auth_token exists
    ({"RAY_AUTH_TOKEN": "t0k3n"}, False, True),
    ({"RAY_AUTH_MODE": "disabled"}, True, False),  # said explicitly: respected
    ({"RAY_AUTH_MODE": "token"}, False, True),
])
def test_joining_a_cluster_uses_token_auth_when_a_token_is_at_hand(tmp_path, environ, token_in_home, expected):
    from studio.rayauth import token_auth_for

    if token_in_home:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("abc123")
    assert token_auth_for("10.0.0.5:6379", {"HOME": str(tmp_path), **environ}) is expected
    path_file = tmp_path / "elsewhere-token"
    path_file.write_text("abc123")
    assert token_auth_for("10.0.0.5:6379", {"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(path_file)}) is True
