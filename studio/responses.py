"""The OpenAI-compatible response bodies (images, models, errors) and the error table of the OpenAPI docs.

Field by field as the OpenAI API documents them; Image Studio's own fields are marked as extras.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="The image, base64-encoded (response_format 'b64_json' or unset).")
    url: str | None = Field(None, description="The image as a data URL, 'data:image/png;base64,...' (response_format 'url' or unset).")
    revised_prompt: str | None = Field(None, description="The prompt the model received (never rewritten here).")
    seed: int = Field(description="Image Studio extra: the seed of this image; with n=1 it reproduces it.")


class UsageTokens(BaseModel):
    image_tokens: int = 0
    text_tokens: int = 0


class Usage(BaseModel):
    """Declared by the OpenAI API; token counts mean nothing for a diffusion model, so all are 0."""

    input_tokens: int = 0
    input_tokens_details: UsageTokens = Field(default_factory=UsageTokens)
    output_tokens: int = 0
    total_tokens: int = 0


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time (seconds) when the images were made.")
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"]
    size: str = Field(description="'WIDTHxHEIGHT' of the images.")
    background: Literal["opaque"] = "opaque"
    model: str = Field(description="Image Studio extra: the id of the model that made the images.")
    usage: Usage = Field(default_factory=Usage)


class ModelObject(BaseModel):
    """An OpenAI model object, with this model's capabilities as extras."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="The owner of the model's Hugging Face repo.")
    # -- Image Studio extras
    label: str
    family: str
    repo: str
    aliases: list[str]
    rank: int = Field(description="The studio's ranking: 1 is the best.")
    stars: float = Field(description="The ranking's stars, of 5.")
    group: str = Field(description="The ranking's group: Top tier, Excellent tier, Specialized, Fast generation, Experimental.")
    strengths: str
    best_for: str
    recommended: dict = Field(
        description="The published recommendation in words (text) and the steps and guidance it stands for."
    )
    memory_gb: dict = Field(
        description="Memory in GB: published (null if none); weights (bf16/fp16, all components) and components, "
        "from the model's files where known (source says: files on disk, hub file sizes or catalog estimate); "
        "plans: the device memory each memory plan needs at the default size; studio: the full plan's; "
        "smallest_plan and smallest: the least; plan: the plan the catalog fixes for it (null: --memory-plan)."
    )
    negative_prompt: bool = Field(description="Whether `negative_prompt` is supported.")
    tasks: list[str] = Field(
        description="'text-to-image' (POST /v1/images/generations), and where the model can edit, 'image-to-image' "
        "and 'inpainting' (POST /v1/images/edits without and with a mask; POST /v1/images/variations is "
        "image-to-image)."
    )
    cfg: bool = Field(description="False for guidance-distilled models: `guidance` is fixed.")
    samplers: list[str] = Field(
        description="The `sampler` values this model takes, by A1111's names ('Euler a', 'DPM++ 2M Karras'); "
        "the flow-matching models take only their flow-matching samplers."
    )
    max_n: int
    defaults: dict = Field(
        description="steps, guidance, width, height (and a negative_prompt where the model has one) used when "
        "a request leaves them unset."
    )
    limits: dict = Field(description="size_multiple, min_side, max_side, max_pixels, max_steps, guidance range.")
    sizes: list[str] = Field(description="Suggested sizes ('WxH'); the only ones allowed when limits.allowed_sizes.")
    on_disk: bool | None = Field(None, description="Whether its weights are on disk (null: not known yet).")
    download_bytes: int | None = Field(
        None, description="What its first use (or `python -m studio pull ID`) downloads; 0 when on disk."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class LoraObject(BaseModel):
    """A LoRA of the library (``--lora-dir``): what a request's ``loras`` may name."""

    name: str = Field(description="What a request's `loras` names: its path under the folder, without .safetensors.")
    family: str = Field(description="The family it is for, read from its keys (sdxl, flux, sana; sd1 or unknown fit none).")
    fits: list[str] = Field(description="The model families that take it.")
    models: list[str] = Field(description="The catalog's models that take it.")
    size_bytes: int
    trigger_words: list[str] = Field(description="Words it was trained on, from its metadata (may be empty).")
    hash: str = Field(description="A1111's short hash (what `Lora hashes` in the images' parameters records).")


class LoraList(BaseModel):
    object: Literal["list"] = "list"
    data: list[LoraObject]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _error_doc(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


# Declaring "default" also stops FastAPI from advertising 422: validation errors are 400 here.
GENERATION_ERRORS = {
    400: _error_doc("Invalid request: the message names the field and the allowed values."),
    401: _error_doc("Missing or wrong API key (only when the server has one)."),
    404: _error_doc("Unknown model."),
    429: _error_doc("The queue is full; retry after the Retry-After header's seconds."),
    500: _error_doc("Unexpected server error."),
    503: _error_doc("A worker failed, ran out of memory, or could not load the model."),
    504: _error_doc("The job took longer than the server's job timeout."),
    "default": _error_doc("Any other error, in the same shape."),
}
READ_ERRORS = {401: GENERATION_ERRORS[401], 404: GENERATION_ERRORS[404], "default": GENERATION_ERRORS["default"]}
