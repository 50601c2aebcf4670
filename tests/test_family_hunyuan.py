"""The HunyuanDiT adapter on its tiny random-weight pipeline, loaded through ``from_pretrained``."""

from __future__ import annotations

import pytest
from family_checks import (
    PROMPT,
    DenoiserCalls,
    TinyModels,
    check_another_pipeline_is_refused_before_loading,
    check_batch_is_one_call_matching_single_runs,
    check_draws_requested_size,
    check_loads_tiny_folder,
    check_progress_and_cancellation,
    check_seed_decides_the_image,
    differ,
)

from studio.catalog import load_catalog
from studio.errors import InvalidRequest
from studio.schemas import GenerationRequest

MODEL_ID = "hunyuan-dit"


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(MODEL_ID))


@pytest.fixture(scope="module")
def spec(tiny):
    return tiny.spec(MODEL_ID)


@pytest.fixture(scope="module")
def pipe(tiny):
    return tiny.pipe(MODEL_ID)


class Calls:
    """Records the first tensor argument of every call of ``module`` (the text encoders' input ids)."""

    def __init__(self, module):
        self.inputs = []
        self.handle = module.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.inputs.append(args[0] if args else next(iter(kwargs.values())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_loads_the_tiny_folder_with_the_real_components(tiny, spec, pipe):
    check_loads_tiny_folder(tiny, MODEL_ID)
    assert spec.pipeline == "HunyuanDiTPipeline"
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert type(pipe.tokenizer).__name__ == "BertTokenizer"
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.transformer.config.use_style_cond_and_image_meta_size is False  # v1.2


@pytest.mark.parametrize("size", [(64, 48), (48, 80)])
def test_draws_exactly_the_requested_size_without_binning(tiny, size):
    # Binning would map 64x48 to 1024x768 and 48x80 to 768x1280, its nearest trained sizes.
    check_draws_requested_size(tiny, MODEL_ID, size)


def test_only_the_listed_sizes_are_accepted(spec):
    with pytest.raises(InvalidRequest) as error:
        spec.check(GenerationRequest(prompt="x", width=64, height=32))
    assert error.value.field == "size"
    assert "64x48" in error.value.message  # the message lists what is allowed

    real = load_catalog().get(MODEL_ID)
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import SUPPORTED_SHAPE

    assert set(real.limits.allowed_sizes) == set(SUPPORTED_SHAPE)  # the ten sizes HunyuanDiT was trained on
    assert (real.defaults.width, real.defaults.height) in real.limits.allowed_sizes


def test_seed_decides_the_image(tiny):
    check_seed_decides_the_image(tiny, MODEL_ID)


def test_two_images_come_from_one_call_and_match_single_runs(tiny):
    # (negative, prompt) x 2 images in each of the two steps' calls.
    check_batch_is_one_call_matching_single_runs(tiny, MODEL_ID, denoiser_batches={"transformer": [4, 4]})


def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny):
    check_progress_and_cancellation(tiny, MODEL_ID)


def _encoded(pipe, text: str) -> list[int]:
    return pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids


def test_guidance_away_from_the_official_negative_prompt_unless_one_is_given(tiny, pipe):
    official = tiny.catalog.get(MODEL_ID).defaults.negative_prompt
    assert official.startswith("错误的眼睛")
    with Calls(pipe.text_encoder) as bert:
        tiny.run(MODEL_ID, guidance=5.0)
    assert [ids[0].tolist() for ids in bert.inputs] == [_encoded(pipe, PROMPT), _encoded(pipe, official)]

    with Calls(pipe.text_encoder) as bert:
        tiny.run(MODEL_ID, guidance=5.0, negative_prompt="blurry")
    assert bert.inputs[1][0].tolist() == _encoded(pipe, "blurry")

    default_negative = tiny.run(MODEL_ID, seed=5)[0]
    other_negative = tiny.run(MODEL_ID, seed=5, negative_prompt="dark night city")[0]
    assert differ(default_negative, other_negative)


def test_guidance_one_runs_the_prompt_alone(tiny, pipe):
    with DenoiserCalls(pipe.transformer) as transformer, Calls(pipe.text_encoder_2) as mt5:
        tiny.run(MODEL_ID, guidance=1.0, steps=2)
    assert transformer.batches == [1, 1]
    assert len(mt5.inputs) == 1  # no unconditional encoding either
    assert mt5.inputs[0].shape[1] == 256  # the mT5 prompt length the transformer was built for


def test_a_catalog_naming_another_pipeline_is_refused_before_loading(tiny):
    check_another_pipeline_is_refused_before_loading(tiny, MODEL_ID, "StableDiffusionXLPipeline")
