"""The SDXL family adapter on tiny random-weight pipelines loaded through ``from_pretrained``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from studio import families
from studio.catalog import load_catalog
from studio.errors import InvalidRequest, JobCancelled
from studio.schemas import GenerationRequest

SDXL_IDS = [spec.id for spec in load_catalog() if spec.family == "sdxl"]
# Images of one batched call differ from single ones by float rounding only (CPU kernels
# pick other blockings for another batch size): at most a couple of 8-bit levels.
BATCH_TOLERANCE = 2


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(*SDXL_IDS)


@pytest.fixture(scope="module")
def pipes(catalog):
    """``pipes(model_id)``: the tiny pipeline, loaded once per module."""
    loaded = {}

    def get(model_id: str):
        if model_id not in loaded:
            loaded[model_id] = families.load_pipeline(catalog.get(model_id), "cpu")
        return loaded[model_id]

    return get


def run(pipes, catalog, model_id: str, on_step=lambda step, total: None, **fields):
    spec = catalog.get(model_id)
    request = spec.check(GenerationRequest(prompt=fields.pop("prompt", "a red fox in a forest"), **fields))
    return families.generate(pipes(model_id), spec, request, on_step)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class UNetInputs:
    """Records the batch size and text length of every UNet call (what guidance and compel decide)."""

    def __init__(self, pipe):
        self.batches: list[int] = []
        self.text_tokens: list[int] = []
        self.handle = pipe.unet.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.batches.append(args[0].shape[0])
        self.text_tokens.append(kwargs["encoder_hidden_states"].shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("model_id", SDXL_IDS)
def test_loads_the_tiny_folder_and_draws_the_requested_size(pipes, catalog, model_id):
    spec = catalog.get(model_id)
    pipe = pipes(model_id)
    assert spec.local_dir is not None
    assert pipe.name_or_path == str(spec.local_dir)
    assert type(pipe).__name__ == spec.pipeline
    assert pipe.device.type == "cpu"

    images = run(pipes, catalog, model_id, width=96, height=64, seed=1)
    assert [image.size for image in images] == [(96, 64)]
    default = run(pipes, catalog, model_id, seed=1)[0]
    assert default.size == (spec.defaults.width, spec.defaults.height)


@pytest.mark.parametrize("model_id", SDXL_IDS)
def test_seed_decides_the_image(pipes, catalog, model_id):
    first = pixels(run(pipes, catalog, model_id, seed=7)[0])
    again = pixels(run(pipes, catalog, model_id, seed=7)[0])
    other = pixels(run(pipes, catalog, model_id, seed=8)[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


@pytest.mark.parametrize("model_id", SDXL_IDS)
def test_two_images_come_from_one_call_and_match_single_runs(pipes, catalog, model_id):
    steps = []

    def record(step, total):
        steps.append(step)

    batch = run(pipes, catalog, model_id, seed=11, steps=2, num_images=2, on_step=record)
    single = [run(pipes, catalog, model_id, seed=seed, steps=2)[0] for seed in (11, 12)]

    assert len(batch) == 2
    assert steps == [1, 2]  # one denoising loop for both images
    for batched, alone in zip(batch, single):
        assert np.abs(pixels(batched) - pixels(alone)).max() <= BATCH_TOLERANCE
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 1.0


def test_progress_reports_every_step_and_cancellation_stops_the_job(pipes, catalog):
    calls = []
    run(pipes, catalog, "sdxl-base", steps=3, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    seen = []

    def cancel_after_first(step, total):
        seen.append(step)
        raise JobCancelled("cancelled by the test")

    with pytest.raises(JobCancelled):
        run(pipes, catalog, "sdxl-base", steps=3, on_step=cancel_after_first)
    assert seen == [1]


def test_guided_models_run_classifier_free_guidance(pipes, catalog):
    pipe = pipes("sdxl-base")
    with UNetInputs(pipe) as unet:
        run(pipes, catalog, "sdxl-base", guidance=6.5, negative_prompt="blurry", num_images=2)
    assert pipe.guidance_scale == 6.5
    assert pipe.do_classifier_free_guidance
    assert unet.batches == [4, 4]  # negative and positive for each of the two images


def test_turbo_runs_unguided_on_trailing_ancestral_euler(pipes, catalog):
    spec = catalog.get("sdxl-turbo")
    pipe = pipes("sdxl-turbo")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"

    with UNetInputs(pipe) as unet:
        images = run(pipes, catalog, "sdxl-turbo", steps=1)
    assert len(images) == 1
    assert pipe.guidance_scale == 0.0
    assert not pipe.do_classifier_free_guidance
    assert unet.batches == [1]  # no unconditional half

    with pytest.raises(InvalidRequest) as guidance:
        spec.check(GenerationRequest(prompt="x", guidance=2.0))
    assert guidance.value.field == "guidance"
    with pytest.raises(InvalidRequest) as negative:
        spec.check(GenerationRequest(prompt="x", negative_prompt="blurry"))
    assert negative.value.field == "negative_prompt"


def test_playground_loads_the_edm_scheduler_its_folder_names(pipes, catalog):
    spec = catalog.get("playground-v2.5")
    saved = json.loads((spec.local_dir / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == spec.scheduler == "EDMDPMSolverMultistepScheduler"
    pipe = pipes("playground-v2.5")
    assert type(pipe.scheduler).__name__ == "EDMDPMSolverMultistepScheduler"
    assert pipe.vae.config.latents_mean is not None  # EDM latents are de-normalised per channel

    steps = []
    run(pipes, catalog, "playground-v2.5", steps=3, on_step=lambda step, total: steps.append(step))
    assert steps == [1, 2, 3]


def test_a_catalog_scheduler_replaces_a_different_shipped_one(catalog):
    spec = replace(catalog.get("sdxl-base"), scheduler="EulerAncestralDiscreteScheduler")
    pipe = families.load_pipeline(spec, "cpu")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "leading"  # the repo's schedule settings survive


LONG_PROMPT = ", ".join(["a red fox in a dark forest at golden hour"] * 12)


def test_compel_encodes_long_prompts_whole(pipes, catalog):
    pipe = pipes("juggernaut-xl-9")
    assert len(pipe.tokenizer(LONG_PROMPT).input_ids) > 3 * 77
    with UNetInputs(pipe) as unet:
        run(pipes, catalog, "juggernaut-xl-9", prompt=LONG_PROMPT, negative_prompt="blurry")
    assert unet.text_tokens[0] > 3 * 77

    spec = replace(catalog.get("juggernaut-xl-9"), compel=False)
    request = spec.check(GenerationRequest(prompt=LONG_PROMPT, negative_prompt="blurry"))
    with UNetInputs(pipe) as unet:
        families.generate(pipe, spec, request, lambda step, total: None)
    assert unet.text_tokens[0] == 77  # the pipeline's own encoder truncates


def test_long_prompt_without_negative_when_the_repo_does_not_zero_it(catalog):
    pipe = families.load_pipeline(catalog.get("realvis-xl-4"), "cpu")  # a private copy: its config changes
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    spec = catalog.get("realvis-xl-4")
    request = spec.check(GenerationRequest(prompt=LONG_PROMPT, seed=3))
    with UNetInputs(pipe) as unet:
        images = families.generate(pipe, spec, request, lambda step, total: None)
    assert len(images) == 1
    assert unet.batches[0] == 2 and unet.text_tokens[0] > 3 * 77
