"""The Stable Cascade adapter on its tiny random-weight prior and decoder, loaded through ``from_pretrained``."""

from __future__ import annotations

from dataclasses import replace

import pytest
from family_checks import (
    AllDenoiserCalls,
    TinyModels,
    check_another_pipeline_is_refused_before_loading,
    check_batch_is_one_call_matching_single_runs,
    check_cancellation_stops_the_job,
    check_draws_requested_size,
    check_loads_tiny_folder,
    check_progress_reports_every_step,
    check_seed_decides_the_image,
    differ,
)

from studio import families
from studio.catalog import load_catalog
from studio.errors import InvalidRequest, ModelLoadFailed
from studio.families.base import load_kwargs
from studio.families.cascade import stage_sources
from studio.schemas import GenerationRequest

MODEL_ID = "stable-cascade"


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(MODEL_ID))


@pytest.fixture(scope="module")
def spec(tiny):
    return tiny.spec(MODEL_ID)


@pytest.fixture(scope="module")
def pipe(tiny):
    return tiny.pipe(MODEL_ID)


def test_loads_both_stages_from_the_tiny_folder(tiny, spec, pipe):
    check_loads_tiny_folder(tiny, MODEL_ID)
    assert spec.pipeline == "StableCascadeCombinedPipeline"
    assert pipe.prior_pipe.name_or_path == str(spec.local_dir / "prior")  # through from_pretrained
    assert pipe.decoder.config._name_or_path == str(spec.local_dir / "decoder")
    assert pipe.vqgan.config._name_or_path == str(spec.local_dir / "decoder")
    assert type(pipe.vqgan).__name__ == "PaellaVQModel"
    assert type(pipe.prior_scheduler).__name__ == type(pipe.scheduler).__name__ == "DDPMWuerstchenScheduler"
    # The stages run with their repos' own settings, not the combined pipeline's defaults.
    assert pipe.prior_pipe.prior is pipe.prior_prior and pipe.decoder_pipe.vqgan is pipe.vqgan
    assert pipe.prior_pipe.config.resolution_multiple == 42.67
    assert pipe.decoder_pipe.config.latent_dim_scale == 10.67


def test_the_image_encoder_stays_on_disk_and_the_text_encoder_is_shared(spec, pipe):
    assert (spec.local_dir / "prior" / "image_encoder").is_dir()  # the folder has it, as the real repo
    assert pipe.prior_image_encoder is None and pipe.prior_pipe.image_encoder is None
    assert pipe.text_encoder is pipe.prior_text_encoder  # loaded once, used by both stages
    assert type(pipe.text_encoder).__name__ == "CLIPTextModelWithProjection"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


@pytest.mark.parametrize("size", [(256, 128), (128, 256)])
def test_draws_the_requested_size(tiny, spec, size):
    check_draws_requested_size(tiny, MODEL_ID, size)
    assert (spec.defaults.width, spec.defaults.height) == (128, 128)


def test_sizes_off_the_prior_grid_are_refused():
    real = load_catalog().get(MODEL_ID)
    assert real.limits.size_multiple == 128
    with pytest.raises(InvalidRequest) as error:
        real.check(GenerationRequest(prompt="x", width=1088, height=1024))  # 1088 = 17 x 64
    assert error.value.field == "width" and "128" in error.value.message


def test_seed_decides_the_image(tiny):
    check_seed_decides_the_image(tiny, MODEL_ID)


def test_two_images_come_from_one_call_and_match_single_runs(tiny):
    # One prior loop (prompt and negative for both images) and one unguided decoder loop.
    check_batch_is_one_call_matching_single_runs(
        tiny, MODEL_ID, denoiser_batches={"prior_prior": [4, 4], "decoder": [2, 2]}
    )


def test_guided_prior_then_unguided_decoder_with_the_decoder_steps(tiny, spec, pipe):
    assert spec.decoder_steps == 2
    with AllDenoiserCalls(pipe) as stages:
        tiny.run(MODEL_ID, steps=3, guidance=4.0)
    assert stages["prior_prior"].batches == [2, 2, 2]  # prompt and negative, for the request's steps
    assert stages["decoder"].batches == [1] * spec.decoder_steps  # no unconditional half
    assert pipe.prior_pipe.guidance_scale == 4.0 and pipe.decoder_pipe.guidance_scale == 0.0

    with AllDenoiserCalls(pipe) as stages:
        tiny.run(MODEL_ID, steps=2, guidance=1.0)
    assert stages["prior_prior"].batches == [1, 1]

    plain = tiny.run(MODEL_ID, seed=3)[0]
    negative = tiny.run(MODEL_ID, seed=3, negative_prompt="dark night city")[0]
    assert differ(plain, negative)


def test_progress_covers_both_stages(tiny):
    check_progress_reports_every_step(tiny, MODEL_ID)


@pytest.mark.parametrize("cancel_at", [1, 4])  # in the prior, in the decoder
def test_cancellation_stops_the_job_in_either_stage(tiny, cancel_at):
    check_cancellation_stops_the_job(tiny, MODEL_ID, cancel_at=cancel_at)


def test_hub_sources_are_the_two_repos_in_the_bf16_variant():
    real = load_catalog().get(MODEL_ID)
    assert stage_sources(real) == ("stabilityai/stable-cascade-prior", "stabilityai/stable-cascade")
    assert load_kwargs(real, "cpu")["variant"] == "bf16"


def test_a_catalog_without_what_the_cascade_needs_is_refused_before_loading(tiny, spec):
    check_another_pipeline_is_refused_before_loading(tiny, MODEL_ID, "StableCascadeDecoderPipeline")
    with pytest.raises(ModelLoadFailed) as error:
        families.load_pipeline(replace(spec, decoder_steps=None), "cpu")
    assert error.value.message.startswith("decoder_steps")
    with pytest.raises(ModelLoadFailed) as error:
        stage_sources(replace(load_catalog().get(MODEL_ID), prior_repo=None))
    assert error.value.message.startswith("prior_repo")
