"""The seam on its own: the typed status, a job's cancel hook, the pipe's messages (no processes)."""

from __future__ import annotations

import json
import pickle

import pytest

from studio.backend import Backend, BackendStatus, SlotStatus
from studio.catalog import load_catalog
from studio.config import Settings
from studio.errors import JobCancelled
from studio.jobs import Job
from studio.protocol import Done, Ready, RunJob, WorkerState
from studio.schemas import GenerationRequest, JobResult, Progress
from studio.slots import SlotManager


@pytest.fixture(scope="module")
def resolved():
    return load_catalog().resolve(GenerationRequest(model="sdxl-turbo", prompt="a lighthouse"))


def test_a_slot_manager_is_a_backend_and_reports_its_slots_before_it_starts():
    manager = SlotManager(Settings(devices=["cpu", "cpu"], max_queue=7), load_catalog())
    assert isinstance(manager, Backend)
    status = manager.status()
    assert [slot.device for slot in status.slots] == ["cpu", "cpu"]
    assert (status.queue_depth, status.max_queue, status.accepting, status.alive) == (0, 7, False, 0)


def test_status_as_dict_is_plain_json_with_every_field():
    slot = SlotStatus(index=0, device="cuda:0", state="ready", alive=True, model="sdxl-base", cached=("flux",))
    data = BackendStatus(slots=(slot,), queue_depth=2, max_queue=8, accepting=True).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["slots"][0]["cached"] == ["flux"] and data["slots"][0]["alive"] is True
    assert {"index", "device", "pid", "busy", "step", "total", "loads", "restart_in_s"} <= set(data["slots"][0])
    assert (data["queue_depth"], data["max_queue"], data["accepting"]) == (2, 8, True)


def test_cancel_goes_through_the_backends_hook(resolved):
    asked = []
    job = Job(*resolved, on_cancel=lambda job: asked.append(job) or job.finish(JobCancelled("stop")))
    job.emit(Progress("queued", queue_position=0))
    assert job.cancel() and asked == [job]
    with pytest.raises(JobCancelled):
        job.wait(1)
    assert not job.cancel()  # already ended: the hook says so
    assert [event.stage for event in job.iter_events()] == ["queued"]


def test_pipe_messages_survive_pickling(resolved):
    spec, request = resolved
    state = WorkerState(model=spec.id, loads=1, cached=("sdxl-base",))
    for message in (RunJob("j1", spec, request), Ready(123, state, (("sdxl-turbo", 1.5),)),
                    Done("j1", JobResult(request=request, images=[b"png"]), state)):
        assert pickle.loads(pickle.dumps(message)) == message
