"""Batches of compatible jobs on the worker side (``RunBatch``): one pipeline call on a real Engine with
tiny models, driven through ``Worker.run_batch`` and the job loop with a list as the pipe.

What README promises for a batch: each job gets exactly its own images (within one level of its own
unbatched run), seeds, prompt and metadata, and its own progress; a cancelled member does not fail the
others; an error fails every member with one message.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from family_checks import AllDenoiserCalls
from PIL import Image

from studio import families
from studio.errors import JobCancelled
from studio.protocol import Done, Failed, Preview, RunJob, Stage, Step
from studio.schemas import GenerationRequest

BATCHING = [name for name, family in families.FAMILIES.items() if family.batches]
MODEL_OF = {"sdxl": "sdxl-base", "flux": "flux-schnell", "pixart": "pixart-sigma", "sana": "sana-1.5",
            "chroma": "chroma", "hunyuan": "hunyuan-dit", "lumina": "lumina-next", "cascade": "stable-cascade"}
SIZE = {"width": 64, "height": 64, "steps": 2}
SIDE = {"cascade": 128}  # Stable Cascade's sizes are multiples of 128
LONG_PROMPT = "a red fox in a dark forest at golden hour, cinematic photo of the sky. " * 2  # > 77 CLIP tokens


class Pipe:
    """The worker's end of the pipe, as a list; ``on_send`` sees each message as it goes."""

    def __init__(self, on_send=None):
        self.sent: list = []
        self.on_send = on_send

    def send(self, message) -> None:
        self.sent.append(message)
        if self.on_send:
            self.on_send(message)

    def of(self, job_id: str, kind: type) -> list:
        return [message for message in self.sent if isinstance(message, kind) and message.job_id == job_id]


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(*(MODEL_OF[name] for name in BATCHING))


@pytest.fixture(scope="module")
def engine():
    from studio.engine import Engine

    return Engine("cpu")


def worker_on(engine, pipe: Pipe):
    from studio.worker import Worker

    return Worker(2, engine, pipe)


def job(spec, job_id: str, prompt: str, seed: int, **fields) -> RunJob:
    side = SIDE.get(spec.family, SIZE["width"])
    size = SIZE | {"width": side, "height": side}
    return RunJob(job_id, spec, spec.check(GenerationRequest(prompt=prompt, seed=seed, **(size | fields))))


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def metadata(png: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(png)).text["studio"])


def assert_alone(engine, member: RunJob, done: Done, previews: list | None = None) -> None:
    """``done`` (and ``previews``) hold what the member's own run makes: its images within one level,
    its seeds and prompt, its previews."""
    solo_previews = []
    alone = engine.run(member.spec, member.request, on_preview=lambda *preview: solo_previews.append(preview[-1]))
    assert len(done.result.images) == member.request.num_images
    for index, (png, solo) in enumerate(zip(done.result.images, alone.images)):
        assert np.abs(pixels(png) - pixels(solo)).max() <= 1, f"{member.job_id}: image {index} vs its own run"
        data = metadata(png)
        assert data["seed"] == member.request.seed + index and data["prompt"] == member.request.prompt
        assert data["negative_prompt"] == member.request.negative_prompt
    assert done.result.request.sampler == alone.request.sampler and done.result.slot == 2
    if previews is not None:
        assert len(previews) == len(solo_previews)
        for preview, solo in zip(previews, solo_previews):
            assert np.abs(pixels(preview.png) - pixels(solo)).max() <= 1, f"{member.job_id}: its preview"


@pytest.mark.parametrize("family", BATCHING)
def test_each_member_gets_its_own_images_seeds_and_progress(engine, catalog, family):
    spec = catalog.get(MODEL_OF[family])
    # A short prompt with a longer negative next to a longer prompt: no member's text is cut or padded
    # to another's length.
    negative = {"negative_prompt": "blurry, low quality, jpeg artifacts, watermark"} if spec.negative_prompt else {}
    members = [job(spec, "a", "a red fox in a dark forest at golden hour", 11, num_images=2, previews=1),
               job(spec, "b", "a lighthouse", 500, previews=1, **negative),
               job(spec, "c", "a bowl of ramen", 7)]
    pipe = Pipe()
    engine.ensure(spec)
    with AllDenoiserCalls(engine.pipe) as calls:
        worker_on(engine, pipe).run_batch(tuple(members))
    for denoiser in calls.values():  # one call: every denoising step holds all four images (and their negatives)
        assert denoiser.batches and all(size % 4 == 0 for size in denoiser.batches)
    for member in members:
        [done] = pipe.of(member.job_id, Done)
        assert_alone(engine, member, done, pipe.of(member.job_id, Preview))
        assert [message.stage for message in pipe.of(member.job_id, Stage)][-2:] == ["generating", "encoding"]
        steps = [message.step for message in pipe.of(member.job_id, Step)]
        assert steps[0] == 1 and steps[-1] == 2 + (spec.decoder_steps or 0)  # Stable Cascade: its decoder's too
        assert not pipe.of(member.job_id, Failed)
    # Stable Cascade keeps no RGB-decodable latents; every other family previews the first image
    assert len(pipe.of("a", Preview)) == (0 if family == "cascade" else 1) and not pipe.of("c", Preview)
    first, other = (pixels(pipe.of(job_id, Done)[0].result.images[0]) for job_id in ("a", "c"))
    assert np.abs(first - other).max() > 1  # the members' own seeds and prompts make other images


def test_compel_prompts_of_different_lengths_and_weights_batch(engine, catalog):
    spec = catalog.get("sdxl-base")
    assert spec.compel
    # A long prompt sets the batch's length; the others are padded to it as compel pads, and masked where
    # their own call has fewer tokens: each member's image is its own.
    members = [job(spec, "long", LONG_PROMPT, 3),
               job(spec, "short", "a (red:1.4) fox AND a cat", 4, negative_prompt=LONG_PROMPT + " blurry"),
               job(spec, "plain", "a (lighthouse:1.2)", 5, num_images=2),
               job(spec, "negated", "a lighthouse", 6, negative_prompt="(fog:-0.5), blurry")]
    pipe = Pipe()
    worker_on(engine, pipe).run_batch(tuple(members))
    for member in members:
        assert_alone(engine, member, pipe.of(member.job_id, Done)[0])
    without = replace(spec, compel=False)  # the pipeline's own 77-token encoding, through encode_prompt
    members = [job(without, "x", "a red fox", 1, negative_prompt="blurry"), job(without, "y", "a cat", 2)]
    pipe = Pipe()
    worker_on(engine, pipe).run_batch(tuple(members))
    for member in members:
        assert_alone(engine, member, pipe.of(member.job_id, Done)[0])


def test_a_member_cancelled_mid_run_fails_alone_and_the_others_finish(engine, catalog):
    spec = catalog.get("sdxl-base")
    members = [job(spec, "keep", "a red fox", 1, steps=4), job(spec, "drop", "a cat", 2, steps=4, num_images=2),
               job(spec, "also", "a dog", 3, steps=4)]

    def cancel_after_first_step(message) -> None:
        if isinstance(message, Step) and message.step == 1:
            worker.cancelled.add("drop")

    pipe = Pipe(cancel_after_first_step)
    worker = worker_on(engine, pipe)
    worker.run_batch(tuple(members))
    [failed] = pipe.of("drop", Failed)
    assert isinstance(failed.error, JobCancelled) and not pipe.of("drop", Done)
    assert max(message.step for message in pipe.of("drop", Step)) == 1  # failed at the next step
    outcomes = [message for message in pipe.sent if isinstance(message, (Done, Failed))]
    assert outcomes[0] is failed  # told at once, not when the batch ends
    for member in (members[0], members[2]):
        [done] = pipe.of(member.job_id, Done)
        assert [message.step for message in pipe.of(member.job_id, Step)][-1] == 4
        assert_alone(engine, member, done)
    assert "drop" not in worker.cancelled and worker.current == ()


def test_a_batch_whose_members_are_all_cancelled_stops(engine, catalog):
    spec = catalog.get("sdxl-base")
    members = [job(spec, "p", "a red fox", 1, steps=20), job(spec, "q", "a cat", 2, steps=20)]
    pipe = Pipe()
    worker = worker_on(engine, pipe)
    worker.cancelled.add("q")  # cancelled while queued: never joins the call

    def cancel(message) -> None:
        if isinstance(message, Step):
            worker.cancelled.add("p")

    pipe.on_send = cancel
    worker.run_batch(tuple(members))
    assert [type(message.error) for message in pipe.sent if isinstance(message, Failed)] == [JobCancelled] * 2
    assert not pipe.of("q", Stage) and max(message.step for message in pipe.of("p", Step)) == 1
    assert not any(isinstance(message, Done) for message in pipe.sent)


def test_an_error_fails_every_member_with_one_message(engine, catalog):
    spec = catalog.get("sdxl-base")
    members = [job(spec, "e1", "a red fox", 1), job(spec, "e2", "a cat", 2), job(spec, "e3", "a dog", 3)]

    def break_at_step(message) -> None:
        if isinstance(message, Step):
            raise RuntimeError("the device fell over")

    pipe = Pipe(break_at_step)
    worker_on(engine, pipe).run_batch(tuple(members))
    failures = [message for message in pipe.sent if isinstance(message, Failed)]
    assert [message.job_id for message in failures] == ["e1", "e2", "e3"]
    assert {message.error.message for message in failures} == {
        "sdxl-base failed on slot 2 (cpu): RuntimeError: the device fell over"}
    assert not any(isinstance(message, Done) for message in pipe.sent)
    pipe = Pipe()  # the engine lives on
    worker_on(engine, pipe).run_batch(tuple(members[:2]))
    assert len([message for message in pipe.sent if isinstance(message, Done)]) == 2


def test_a_family_that_does_not_batch_fails_its_members_clearly(engine, catalog, monkeypatch):
    spec = catalog.get("flux-schnell")
    monkeypatch.setitem(families.FAMILIES, "flux", replace(families.FAMILIES["flux"], batches=False))
    pipe = Pipe()
    worker_on(engine, pipe).run_batch((job(spec, "s1", "a fox", 1), job(spec, "s2", "a cat", 2)))
    messages = {message.error.message for message in pipe.sent if isinstance(message, Failed)}
    assert messages == {"flux-schnell cannot run text-to-image jobs as one batch"}


def test_an_out_of_memory_retries_the_whole_batch_once_then_fails_every_member(catalog, monkeypatch):
    import torch

    from studio.engine import Engine
    from studio.errors import OutOfMemory

    spec = catalog.get("flux-schnell")
    real_generate, calls = families.generate, []

    def generate(pipe, spec, request, on_step):
        calls.append(request.num_images)
        if len(calls) == 1 or "always" in request.prompt[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_generate(pipe, spec, request, on_step)

    monkeypatch.setattr(families, "generate", generate)
    engine = Engine("cpu")  # its own: the retry moves the model to a smaller plan for good
    pipe = Pipe()
    worker_on(engine, pipe).run_batch((job(spec, "o1", "a fox", 1, num_images=2), job(spec, "o2", "a cat", 5)))
    assert calls == [3, 3]  # the whole batch, twice
    for job_id in ("o1", "o2"):
        [done] = pipe.of(job_id, Done)
        assert {metadata(png)["memory_plan"] for png in done.result.images} == {"fp8"}  # retried on fp8 (CPU)
    pipe = Pipe()
    worker_on(engine, pipe).run_batch((job(spec, "o3", "always", 1), job(spec, "o4", "a cat", 2)))
    failures = [message for message in pipe.sent if isinstance(message, Failed)]
    assert [message.job_id for message in failures] == ["o3", "o4"]
    assert all(isinstance(message.error, OutOfMemory) for message in failures)
    assert len({message.error.message for message in failures}) == 1


@pytest.mark.parametrize("model_id", ["sdxl-base", "flux-schnell"])
def test_an_ancestral_sampler_draws_each_images_step_noise_from_its_own_seed(engine, catalog, model_id):
    # SDXL's pipeline passes its generators to the sampler's step; FLUX's passes none (scheduling.seeded_steps)
    spec = catalog.get(model_id)
    members = [job(spec, "s1", "a red fox", 21, num_images=2, sampler="Euler a"),
               job(spec, "s2", "a lighthouse", 40, sampler="Euler a")]
    pipe = Pipe()
    worker_on(engine, pipe).run_batch(tuple(members))
    for member in members:
        [done] = pipe.of(member.job_id, Done)
        assert done.result.request.sampler == "Euler a"
        assert_alone(engine, member, done)
