"""The Stable Cascade adapter on its tiny random-weight prior and decoder, loaded through ``from_pretrained``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from studio import families
from studio.catalog import load_catalog
from studio.errors import InvalidRequest, JobCancelled, ModelLoadFailed
from studio.families.cascade import stage_sources
from studio.families.base import load_kwargs
from studio.schemas import GenerationRequest

MODEL_ID = "stable-cascade"
# Images of one batched call differ from single ones by float rounding only: a couple of 8-bit levels.
BATCH_TOLERANCE = 2


@pytest.fixture(scope="module")
def spec(tiny_catalog):
    return tiny_catalog(MODEL_ID).get(MODEL_ID)


@pytest.fixture(scope="module")
def pipe(spec):
    return families.load_pipeline(spec, "cpu")


def run(pipe, spec, on_step=lambda step, total: None, **fields) -> list:
    request = spec.check(GenerationRequest(prompt=fields.pop("prompt", "a red fox in a forest"), **fields))
    return families.generate(pipe, spec, request, on_step)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class StageCalls:
    """Records the batch of every call of the prior's and the decoder's UNet."""

    def __init__(self, pipe):
        self.prior: list[int] = []
        self.decoder: list[int] = []
        self.handles = [
            pipe.prior_prior.register_forward_pre_hook(self._recorder(self.prior), with_kwargs=True),
            pipe.decoder.register_forward_pre_hook(self._recorder(self.decoder), with_kwargs=True),
        ]

    @staticmethod
    def _recorder(batches: list):
        def record(module, args, kwargs):
            batches.append((args[0] if args else kwargs["sample"]).shape[0])

        return record

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def test_loads_both_stages_from_the_tiny_folder(spec, pipe):
    assert type(pipe).__name__ == spec.pipeline == "StableCascadeCombinedPipeline"
    assert pipe.name_or_path == str(spec.local_dir)
    assert pipe.prior_pipe.name_or_path == str(spec.local_dir / "prior")  # through from_pretrained
    assert pipe.decoder.config._name_or_path == str(spec.local_dir / "decoder")
    assert pipe.vqgan.config._name_or_path == str(spec.local_dir / "decoder")
    assert type(pipe.vqgan).__name__ == "PaellaVQModel"
    assert type(pipe.prior_scheduler).__name__ == type(pipe.scheduler).__name__ == "DDPMWuerstchenScheduler"
    assert pipe.device.type == "cpu"
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
def test_draws_the_requested_size(spec, pipe, size):
    width, height = size
    images = run(pipe, spec, width=width, height=height, seed=1)
    assert [image.size for image in images] == [size]
    assert run(pipe, spec, seed=1)[0].size == (spec.defaults.width, spec.defaults.height) == (128, 128)


def test_sizes_off_the_prior_grid_are_refused():
    real = load_catalog().get(MODEL_ID)
    assert real.limits.size_multiple == 128
    with pytest.raises(InvalidRequest) as error:
        real.check(GenerationRequest(prompt="x", width=1088, height=1024))  # 1088 = 17 x 64
    assert error.value.field == "width" and "128" in error.value.message


def test_seed_decides_the_image(spec, pipe):
    first = pixels(run(pipe, spec, seed=7)[0])
    again = pixels(run(pipe, spec, seed=7)[0])
    other = pixels(run(pipe, spec, seed=8)[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_two_images_come_from_one_call_and_match_single_runs(spec, pipe):
    steps = []
    with StageCalls(pipe) as stages:
        batch = run(pipe, spec, seed=11, num_images=2, on_step=lambda step, total: steps.append(step))
    single = [run(pipe, spec, seed=seed)[0] for seed in (11, 12)]

    assert len(batch) == 2
    assert steps == [1, 2, 3, 4]  # one prior loop and one decoder loop for both images
    assert stages.prior == [4, 4] and stages.decoder == [2, 2]
    for batched, alone in zip(batch, single):
        assert np.abs(pixels(batched) - pixels(alone)).max() <= BATCH_TOLERANCE
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 1.0


def test_guided_prior_then_unguided_decoder_with_the_decoder_steps(spec, pipe):
    assert spec.decoder_steps == 2
    with StageCalls(pipe) as stages:
        run(pipe, spec, steps=3, guidance=4.0)
    assert stages.prior == [2, 2, 2]  # prompt and negative, for the request's steps
    assert stages.decoder == [1] * spec.decoder_steps  # no unconditional half
    assert pipe.prior_pipe.guidance_scale == 4.0 and pipe.decoder_pipe.guidance_scale == 0.0

    with StageCalls(pipe) as stages:
        run(pipe, spec, steps=2, guidance=1.0)
    assert stages.prior == [1, 1]

    plain = pixels(run(pipe, spec, seed=3)[0])
    negative = pixels(run(pipe, spec, seed=3, negative_prompt="dark night city")[0])
    assert np.abs(plain - negative).mean() > 1.0


def test_progress_covers_both_stages(spec, pipe):
    calls = []
    run(pipe, spec, steps=3, on_step=lambda step, total: calls.append((step, total)))
    total = 3 + spec.decoder_steps
    assert calls == [(step, total) for step in range(1, total + 1)]


@pytest.mark.parametrize("cancel_at", [1, 4])  # in the prior, in the decoder
def test_cancellation_stops_the_job_in_either_stage(spec, pipe, cancel_at):
    seen = []

    def cancel(step, total):
        seen.append(step)
        if step == cancel_at:
            raise JobCancelled("cancelled by the test")

    with StageCalls(pipe) as stages, pytest.raises(JobCancelled):
        run(pipe, spec, steps=3, on_step=cancel)
    assert seen[-1] == cancel_at
    assert len(stages.prior) + len(stages.decoder) == cancel_at  # no step after the cancelled one


def test_hub_sources_are_the_two_repos_in_the_bf16_variant():
    real = load_catalog().get(MODEL_ID)
    assert stage_sources(real) == ("stabilityai/stable-cascade-prior", "stabilityai/stable-cascade")
    assert load_kwargs(real, "cpu")["variant"] == "bf16"


def test_a_catalog_without_what_the_cascade_needs_is_refused_before_loading(spec):
    with pytest.raises(ModelLoadFailed) as error:
        families.load_pipeline(replace(spec, pipeline="StableCascadeDecoderPipeline"), "cpu")
    assert "StableCascadeCombinedPipeline" in error.value.message
    with pytest.raises(ModelLoadFailed) as error:
        families.load_pipeline(replace(spec, decoder_steps=None), "cpu")
    assert error.value.message.startswith("decoder_steps")
    with pytest.raises(ModelLoadFailed) as error:
        stage_sources(replace(load_catalog().get(MODEL_ID), prior_repo=None))
    assert error.value.message.startswith("prior_repo")
