"""The HunyuanDiT adapter on its tiny random-weight pipeline, loaded through ``from_pretrained``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from studio import families
from studio.catalog import load_catalog
from studio.errors import InvalidRequest, JobCancelled, ModelLoadFailed
from studio.families.hunyuan import DEFAULT_NEGATIVE_PROMPT
from studio.schemas import GenerationRequest

MODEL_ID = "hunyuan-dit"
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


class Calls:
    """Records the first tensor argument of every call of ``module`` (input ids, latents)."""

    def __init__(self, module):
        self.inputs = []
        self.handle = module.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.inputs.append(args[0] if args else next(iter(kwargs.values())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_loads_the_tiny_folder_with_the_real_components(spec, pipe):
    assert spec.local_dir is not None and pipe.name_or_path == str(spec.local_dir)
    assert type(pipe).__name__ == spec.pipeline == "HunyuanDiTPipeline"
    assert pipe.device.type == "cpu"
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert type(pipe.tokenizer).__name__ == "BertTokenizer"
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.transformer.config.use_style_cond_and_image_meta_size is False  # v1.2


@pytest.mark.parametrize("size", [(64, 48), (48, 80)])
def test_draws_exactly_the_requested_size_without_binning(spec, pipe, size):
    # Binning would map 64x48 to 1024x768 and 48x80 to 768x1280, its nearest trained sizes.
    width, height = size
    images = run(pipe, spec, width=width, height=height, seed=1)
    assert [image.size for image in images] == [size]
    assert run(pipe, spec, seed=1)[0].size == (spec.defaults.width, spec.defaults.height)


def test_only_the_listed_sizes_are_accepted(spec):
    with pytest.raises(InvalidRequest) as error:
        spec.check(GenerationRequest(prompt="x", width=64, height=32))
    assert error.value.field == "size"
    assert "64x48" in error.value.message  # the message lists what is allowed

    real = load_catalog().get(MODEL_ID)
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import SUPPORTED_SHAPE

    assert set(real.limits.allowed_sizes) == set(SUPPORTED_SHAPE)  # the ten sizes HunyuanDiT was trained on
    assert (real.defaults.width, real.defaults.height) in real.limits.allowed_sizes


def test_seed_decides_the_image(spec, pipe):
    first = pixels(run(pipe, spec, seed=7)[0])
    again = pixels(run(pipe, spec, seed=7)[0])
    other = pixels(run(pipe, spec, seed=8)[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_two_images_come_from_one_call_and_match_single_runs(spec, pipe):
    steps = []
    with Calls(pipe.transformer) as transformer:
        batch = run(pipe, spec, seed=11, num_images=2, on_step=lambda step, total: steps.append(step))
    single = [run(pipe, spec, seed=seed)[0] for seed in (11, 12)]

    assert len(batch) == 2
    assert steps == [1, 2]  # one denoising loop for both images
    assert [latents.shape[0] for latents in transformer.inputs] == [4, 4]  # (negative, prompt) x 2 images
    for batched, alone in zip(batch, single):
        assert np.abs(pixels(batched) - pixels(alone)).max() <= BATCH_TOLERANCE
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 1.0


def test_progress_reports_every_step_and_cancellation_stops_the_job(spec, pipe):
    calls = []
    run(pipe, spec, steps=3, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    seen = []

    def cancel_after_first(step, total):
        seen.append(step)
        raise JobCancelled("cancelled by the test")

    with Calls(pipe.transformer) as transformer, pytest.raises(JobCancelled):
        run(pipe, spec, steps=3, on_step=cancel_after_first)
    assert seen == [1]
    assert len(transformer.inputs) == 1  # no step after the cancelled one


def _encoded(pipe, text: str) -> list[int]:
    return pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids


def test_guidance_away_from_the_official_negative_prompt_unless_one_is_given(spec, pipe):
    with Calls(pipe.text_encoder) as bert:
        run(pipe, spec, guidance=5.0)
    assert [ids[0].tolist() for ids in bert.inputs] == [_encoded(pipe, "a red fox in a forest"),
                                                        _encoded(pipe, DEFAULT_NEGATIVE_PROMPT)]

    with Calls(pipe.text_encoder) as bert:
        run(pipe, spec, guidance=5.0, negative_prompt="blurry")
    assert bert.inputs[1][0].tolist() == _encoded(pipe, "blurry")

    default_negative = pixels(run(pipe, spec, seed=5)[0])
    other_negative = pixels(run(pipe, spec, seed=5, negative_prompt="dark night city")[0])
    assert np.abs(default_negative - other_negative).mean() > 1.0


def test_guidance_one_runs_the_prompt_alone(spec, pipe):
    with Calls(pipe.transformer) as transformer, Calls(pipe.text_encoder_2) as mt5:
        run(pipe, spec, guidance=1.0, steps=2)
    assert [latents.shape[0] for latents in transformer.inputs] == [1, 1]
    assert len(mt5.inputs) == 1  # no unconditional encoding either
    assert mt5.inputs[0].shape[1] == 256  # the mT5 prompt length the transformer was built for


def test_a_catalog_naming_another_pipeline_is_refused_before_loading(spec):
    with pytest.raises(ModelLoadFailed) as error:
        families.load_pipeline(replace(spec, pipeline="StableDiffusionXLPipeline"), "cpu")
    assert "HunyuanDiTPipeline" in error.value.message
