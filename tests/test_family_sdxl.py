"""The SDXL family adapter on tiny random-weight pipelines loaded through ``from_pretrained``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from family_checks import (
    DenoiserCalls,
    TinyModels,
    check_batch_is_one_call_matching_single_runs,
    check_loads_tiny_folder_and_draws_requested_size,
    check_progress_and_cancellation,
    check_seed_decides_the_image,
    ignore_steps,
)

from studio import families
from studio.catalog import load_catalog
from studio.errors import InvalidRequest
from studio.schemas import GenerationRequest

SDXL_IDS = [spec.id for spec in load_catalog() if spec.family == "sdxl"]


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(*SDXL_IDS))


@pytest.mark.parametrize("model_id", SDXL_IDS)
def test_loads_the_tiny_folder_and_draws_the_requested_size(tiny, model_id):
    check_loads_tiny_folder_and_draws_requested_size(tiny, model_id, (96, 64))


@pytest.mark.parametrize("model_id", SDXL_IDS)
def test_seed_decides_the_image(tiny, model_id):
    check_seed_decides_the_image(tiny, model_id)


@pytest.mark.parametrize("model_id", SDXL_IDS)
def test_two_images_come_from_one_call_and_match_single_runs(tiny, model_id):
    check_batch_is_one_call_matching_single_runs(tiny, model_id)


def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny):
    check_progress_and_cancellation(tiny, "sdxl-base")


def test_guided_models_run_classifier_free_guidance(tiny):
    pipe = tiny.pipe("sdxl-base")
    with DenoiserCalls(pipe.unet) as unet:
        tiny.run("sdxl-base", guidance=6.5, negative_prompt="blurry", num_images=2)
    assert pipe.guidance_scale == 6.5
    assert pipe.do_classifier_free_guidance
    assert unet.batches == [4, 4]  # negative and positive for each of the two images


def test_turbo_runs_unguided_on_trailing_ancestral_euler(tiny):
    spec = tiny.spec("sdxl-turbo")
    pipe = tiny.pipe("sdxl-turbo")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"

    with DenoiserCalls(pipe.unet) as unet:
        images = tiny.run("sdxl-turbo", steps=1)
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


def test_playground_loads_the_edm_scheduler_its_folder_names(tiny):
    spec = tiny.spec("playground-v2.5")
    saved = json.loads((spec.local_dir / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == spec.scheduler == "EDMDPMSolverMultistepScheduler"
    pipe = tiny.pipe("playground-v2.5")
    assert type(pipe.scheduler).__name__ == "EDMDPMSolverMultistepScheduler"
    assert pipe.vae.config.latents_mean is not None  # EDM latents are de-normalised per channel

    steps = []
    tiny.run("playground-v2.5", steps=3, on_step=lambda step, total: steps.append(step))
    assert steps == [1, 2, 3]


def test_a_catalog_scheduler_replaces_a_different_shipped_one(tiny):
    spec = replace(tiny.spec("sdxl-base"), scheduler="EulerAncestralDiscreteScheduler")
    pipe = families.load_pipeline(spec, "cpu")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "leading"  # the repo's schedule settings survive


LONG_PROMPT = ", ".join(["a red fox in a dark forest at golden hour"] * 12)


def test_compel_encodes_long_prompts_whole(tiny):
    pipe = tiny.pipe("juggernaut-xl-9")
    assert len(pipe.tokenizer(LONG_PROMPT).input_ids) > 3 * 77
    with DenoiserCalls(pipe.unet) as unet:
        tiny.run("juggernaut-xl-9", prompt=LONG_PROMPT, negative_prompt="blurry")
    assert unet.text_tokens[0] > 3 * 77

    spec = replace(tiny.spec("juggernaut-xl-9"), compel=False)
    request = spec.check(GenerationRequest(prompt=LONG_PROMPT, negative_prompt="blurry"))
    with DenoiserCalls(pipe.unet) as unet:
        families.generate(pipe, spec, request, ignore_steps)
    assert unet.text_tokens[0] == 77  # the pipeline's own encoder truncates


def test_long_prompt_without_negative_when_the_repo_does_not_zero_it(tiny):
    pipe = families.load_pipeline(tiny.spec("realvis-xl-4"), "cpu")  # a private copy: its config changes
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    spec = tiny.spec("realvis-xl-4")
    request = spec.check(GenerationRequest(prompt=LONG_PROMPT, seed=3))
    with DenoiserCalls(pipe.unet) as unet:
        images = families.generate(pipe, spec, request, ignore_steps)
    assert len(images) == 1
    assert unet.batches[0] == 2 and unet.text_tokens[0] > 3 * 77
