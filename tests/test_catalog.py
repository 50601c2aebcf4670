"""The catalog and the one validation step: every model, every kind of bad input."""

import pytest

from studio.catalog import load_catalog
from studio.errors import InvalidRequest, QueueFull, UnknownModel
from studio.schemas import GenerationRequest, parse_request

EXPECTED_IDS = {
    "flux-dev", "flux-schnell", "pixart-sigma", "playground-v2.5", "animagine-xl-4", "dreamshaper-xl",
    "juggernaut-xl-9", "realvis-xl-4", "sdxl-base", "sdxl-turbo", "sana-1.5", "hunyuan-dit", "lumina-next",
    "stable-cascade", "chroma",
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_catalog_has_the_fifteen_models_with_real_repos(catalog):
    assert {spec.id for spec in catalog} == EXPECTED_IDS
    assert catalog.default == "flux-schnell"
    for spec in catalog:
        owner, _, name = spec.repo.partition("/")
        assert owner and name, spec.id
        assert spec.source == spec.repo  # no models folder: load from the hub
        assert spec.card.rank and spec.card.group in catalog.groups and spec.card.best_for
        # the defaults themselves must pass the model's own limits
        resolved = spec.check(GenerationRequest(prompt="a red fox"))
        assert (resolved.width, resolved.height) == (spec.defaults.width, spec.defaults.height)


def test_alias_and_case_resolve_to_the_id(catalog):
    assert catalog.get("pixart").id == "pixart-sigma"
    assert catalog.get("SDXL-Base").id == "sdxl-base"
    assert catalog.get(None).id == "flux-schnell"


def test_pixart_sigma_reaches_4096(catalog):
    spec = catalog.get("pixart-sigma")
    resolved = spec.check(GenerationRequest(prompt="x", width=4096, height=4096))
    assert resolved.width == 4096
    assert (4096, 4096) in spec.size_presets()


def test_unset_fields_take_the_defaults_and_a_seed_is_drawn(catalog):
    spec, resolved = catalog.resolve(GenerationRequest(prompt="x", model="sdxl-turbo"))
    assert resolved.model == "sdxl-turbo"
    assert (resolved.width, resolved.height, resolved.steps, resolved.guidance) == (512, 512, 1, 0.0)
    assert 0 <= resolved.seed <= 2**32 - 1
    assert GenerationRequest(prompt="x", seed=5, num_images=3).seeds == [5, 6, 7]


def test_a_default_negative_prompt_is_filled_in_where_the_model_has_one(catalog):
    # HunyuanDiT's reference negative is recorded in the resolved request (so in the PNG metadata).
    _, resolved = catalog.resolve(GenerationRequest(prompt="x", model="hunyuan-dit"))
    official = catalog.get("hunyuan-dit").defaults.negative_prompt
    assert official and resolved.negative_prompt == official
    assert catalog.get("hunyuan-dit").defaults.as_dict()["negative_prompt"] == official  # listed by both APIs
    assert "negative_prompt" not in catalog.get("sdxl-base").defaults.as_dict()
    _, resolved = catalog.resolve(GenerationRequest(prompt="x", model="hunyuan-dit", negative_prompt="blurry"))
    assert resolved.negative_prompt == "blurry"
    _, resolved = catalog.resolve(GenerationRequest(prompt="x", model="sdxl-base", negative_prompt=""))
    assert resolved.negative_prompt is None


@pytest.mark.parametrize(
    "fields, error, field, words",
    [
        (dict(model="nope"), UnknownModel, "model", ["unknown model 'nope'", "flux-schnell"]),
        (dict(model="flux-dev", width=1000, height=1024), InvalidRequest, "width", ["multiple of 16"]),
        (dict(model="flux-dev", width=1024, height=4096), InvalidRequest, "height", ["256..2048"]),
        (dict(model="hunyuan-dit", width=1000, height=1000), InvalidRequest, "size", ["1000x1000", "1280x768"]),
        (dict(model="flux-schnell", negative_prompt="blurry"), InvalidRequest, "negative_prompt", ["flux-schnell"]),
        (dict(model="flux-schnell", guidance=3.5), InvalidRequest, "guidance", ["guidance-distilled"]),
        (dict(model="sdxl-base", guidance=25.0), InvalidRequest, "guidance", ["1..20"]),
        (dict(model="sdxl-turbo", steps=10), InvalidRequest, "steps", ["1..4"]),
        (dict(model="sdxl-base", width=2048, height=2048 + 8), InvalidRequest, "height", ["512..2048"]),
    ],
)
def test_model_limits_name_the_field_and_the_allowed_values(catalog, fields, error, field, words):
    with pytest.raises(error) as caught:
        catalog.resolve(GenerationRequest(prompt="a red fox", **fields))
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}:")
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(
    "data, field, words",
    [
        (dict(prompt="x", num_images=5), "num_images", ["1..4"]),
        (dict(prompt="x", steps=0), "steps", ["1..150"]),
        (dict(prompt="x", seed=-1), "seed", ["0..4294967295"]),
        (dict(prompt="x", width="wide"), "width", ["integer"]),
        (dict(prompt="x", colour="red"), "colour", ["unknown field"]),
    ],
)
def test_general_limits_name_the_field(data, field, words):
    with pytest.raises(InvalidRequest) as caught:
        parse_request(data)
    assert caught.value.field == field and caught.value.status == 400
    for word in words:
        assert word in caught.value.message


def test_only_image_to_image_may_go_without_a_prompt(catalog):
    # A variation is image-to-image with an empty prompt; text-to-image and inpainting need words.
    for inputs in ({}, {"image": b"png", "mask": b"png"}):
        with pytest.raises(InvalidRequest) as caught:
            catalog.parse({"prompt": "", "model": "sdxl-base", **inputs})
        assert caught.value.field == "prompt" and "at least 1 character" in caught.value.message
    _, resolved = catalog.parse({"prompt": "", "model": "sdxl-base", "image": b"png"})
    assert (resolved.task, resolved.prompt) == ("image-to-image", "")


def test_studio_errors_survive_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(InvalidRequest("steps: too many", field="steps")))
    assert isinstance(error, InvalidRequest)
    assert (error.message, error.field, error.status) == ("steps: too many", "steps", 400)
    assert error.to_dict() == {"message": "steps: too many", "type": "invalid_request_error", "param": "steps",
                               "code": "invalid_value"}
    full = pickle.loads(pickle.dumps(QueueFull("the queue is full", retry_after_s=12)))
    assert (full.message, full.retry_after_s, full.status) == ("the queue is full", 12, 429)


def test_models_folder_overrides_only_the_models_it_holds(tmp_path):
    (tmp_path / "sdxl-turbo").mkdir()
    (tmp_path / "sdxl-turbo" / "studio.toml").write_text("[defaults]\nwidth = 64\nheight = 64\n"
                                                          "[limits]\nmin_side = 32\n")
    catalog = load_catalog(tmp_path)
    turbo = catalog.get("sdxl-turbo")
    assert turbo.source == str((tmp_path / "sdxl-turbo").resolve())
    assert (turbo.defaults.width, turbo.limits.min_side, turbo.limits.max_side) == (64, 32, 1024)
    assert catalog.get("sdxl-base").source == "stabilityai/stable-diffusion-xl-base-1.0"


def test_models_list_in_the_published_ranking_with_its_groups(catalog):
    ranking = ["pixart-sigma", "flux-dev", "flux-schnell", "playground-v2.5", "animagine-xl-4", "dreamshaper-xl",
               "juggernaut-xl-9", "realvis-xl-4", "sdxl-base", "sdxl-turbo", "sana-1.5", "hunyuan-dit",
               "lumina-next", "stable-cascade", "chroma"]
    assert [spec.id for spec in catalog] == ranking
    assert [spec.card.rank for spec in catalog] == list(range(1, 16))
    assert catalog.groups == ("Top tier", "Excellent tier", "Specialized", "Fast generation", "Experimental")
    assert [[spec.id for spec in specs] for _, specs in catalog.grouped()] == [
        ranking[0:2], ranking[2:4], ranking[4:8], ranking[8:10], ranking[10:15]]
    for spec in catalog:  # what "Use" loads is a valid request for the model
        spec.check(GenerationRequest(prompt="x", **spec.recommended()))


def test_use_loads_the_middle_of_the_published_range_and_the_listing_says_both(catalog):
    pixart, flux_dev = catalog.get("pixart-sigma"), catalog.get("flux-dev")
    assert pixart.recommended() == {"steps": 40, "guidance": 4.5}
    assert (flux_dev.recommended()["steps"], flux_dev.defaults.steps) == (50, 28)
    listing = flux_dev.listing()
    assert (listing["rank"], listing["stars"], listing["group"]) == (2, 5, "Top tier")
    assert listing["recommended"]["steps"] == 50 and listing["defaults"]["steps"] == 28
    assert listing["memory_gb"] == flux_dev.memory() and listing["memory_gb"]["published"] == 15


def test_a_number_past_every_models_bounds_is_refused_with_the_loaded_models_range(tmp_path):
    (tmp_path / "pixart-sigma").mkdir()
    (tmp_path / "pixart-sigma" / "studio.toml").write_text("[limits]\nmin_side = 32\nmax_side = 256\n")
    tiny = load_catalog(tmp_path)
    spec = tiny.get("pixart-sigma")

    for field, value, allowed in (("width", 5000, "32..256"), ("width", 320, "32..256"), ("steps", 400, "1..100")):
        with pytest.raises(InvalidRequest) as caught:
            tiny.parse({"prompt": "x", "model": "pixart", field: value})
        assert caught.value.message == f"{field}: {value} is out of range for pixart-sigma; allowed {allowed}"
        assert caught.value.field == field
    assert f"{spec.allowed('width')} px" == "32..256 px"  # the Width hint of the UI says the same range
    with pytest.raises(InvalidRequest, match="prompt"):  # other pydantic errors stay as they were
        tiny.parse({"prompt": "", "model": "pixart"})
