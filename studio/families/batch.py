"""Compatible requests as one pipeline call (``RunBatch``): what an adapter reads instead of one request.

A ``BatchedRequest`` answers the settings its members share (model, task, size, steps, guidance, sampler,
LoRAs) as its first member does, and the per-image ones image by image: ``prompt`` and ``negative_prompt``
are lists with each member's text repeated for each of its images ("" for no negative), ``seeds`` all
members' seeds in order, ``num_images`` their sum. An adapter that passes the lists with one image per prompt
(``images_per_prompt``) and one generator per seed (``base.generators``) makes image i of a member
what that member's own call makes, up to batched float math.

Torch-free: the engine builds one, the adapters read it.
"""

from __future__ import annotations

from itertools import accumulate

from studio.errors import StudioError
from studio.schemas import GenerationRequest

# What members must share to run as one call (the parent's batching rule); the rest is per member.
SHARED = ("model", "task", "width", "height", "steps", "guidance", "sampler", "loras")


class BatchedRequest:
    """The members of one pipeline call, in order; image indices run member by member."""

    def __init__(self, requests):
        self.requests: tuple[GenerationRequest, ...] = tuple(requests)
        first = self.requests[0]
        for request in self.requests[1:]:
            differing = [name for name in SHARED if getattr(request, name) != getattr(first, name)]
            if differing:
                raise StudioError(f"a batch's jobs must share {', '.join(differing)} to run as one call")

    def __getattr__(self, name: str):
        return getattr(self.requests[0], name)  # a setting every member shares

    @property
    def num_images(self) -> int:
        return sum(request.num_images for request in self.requests)

    @property
    def counts(self) -> list[int]:
        return [request.num_images for request in self.requests]

    @property
    def first_images(self) -> list[int]:
        """The index in the batch of each member's first image."""
        return [0, *accumulate(self.counts)][:-1]

    @property
    def seeds(self) -> list[int]:
        return [seed for request in self.requests for seed in request.seeds]

    @property
    def prompt(self) -> list[str]:
        return [request.prompt for request in self.requests for _ in range(request.num_images)]

    @property
    def negative_prompt(self) -> list[str]:
        """"" for a member without one: every pipeline that takes lists reads None as the empty prompt
        (SDXL, which zeroes it instead, encodes its members one by one)."""
        return [request.negative_prompt or "" for request in self.requests for _ in range(request.num_images)]

    def split(self, images: list) -> list[list]:
        """``images`` of the whole call, member by member."""
        return [images[first:first + count] for first, count in zip(self.first_images, self.counts)]


def members(request) -> tuple[GenerationRequest, ...]:
    """The requests one call runs: a batch's members, or the request itself."""
    return request.requests if isinstance(request, BatchedRequest) else (request,)


def images_per_prompt(request) -> int:
    """``num_images_per_prompt``: a batch lists a prompt per image; one request repeats its one prompt."""
    return 1 if isinstance(request, BatchedRequest) else request.num_images
