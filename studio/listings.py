"""What the model listings answer, typed: ``GET /v1/models``, the Gradio API's ``/models`` and the
cards read these shapes (``ModelSpec.listing()`` builds them)."""

from __future__ import annotations

from typing import TypedDict


class RecommendedListing(TypedDict):
    text: str  # the published settings in words; empty: the authors' defaults are the recommendation
    steps: int  # what the UI's "Use" loads
    guidance: float


class MemoryListing(TypedDict):
    published: float | None  # GB, where the authors publish one
    studio: float  # GB of device memory to run whole (the full plan) at the default size
    weights: float  # GB of weights in the CUDA dtype (bf16/fp16), all components
    components: dict[str, float]  # GB per component (denoiser, text encoders, VAE)
    source: str  # where the sizes come from: "files on disk", "hub file sizes" or "catalog estimate"
    plans: dict[str, float]  # GB of device memory each memory plan needs at the default size
    smallest_plan: str  # the plan that needs least device memory (studio/memory.py)
    smallest: float  # GB that plan needs
    plan: str | None  # the plan the catalog fixes for this model; None: --memory-plan decides


class ModelListing(TypedDict):
    """One model as both APIs' listings give it (``listing()``): the type the Gradio API's ``/models`` shows."""

    id: str
    label: str
    family: str
    repo: str
    aliases: list[str]
    rank: int
    stars: float
    group: str
    strengths: str
    best_for: str
    recommended: RecommendedListing
    memory_gb: MemoryListing
    negative_prompt: bool
    cfg: bool
    tasks: list[str]
    samplers: list[str]
    defaults: dict[str, float | int | str]
    limits: dict[str, int | float | list[str]]  # Limits' fields, sizes as "1024x1024", and max_seed
    sizes: list[str]
