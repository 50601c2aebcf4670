"""``Engine``: one device holding at most one resident pipeline, turning requests into PNGs.

The worker process wraps one Engine; the command line uses one in-process.
Imports torch, so never import this module in the parent server process.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import torch

from studio import families, pngmeta
from studio.catalog import ModelSpec
from studio.errors import JobCancelled, ModelLoadFailed, OutOfMemory, StudioError
from studio.schemas import GenerationRequest, JobResult

OnStep = Callable[[int, int], None]
OnStage = Callable[[str], None]


def _ignore(*_args) -> None:
    return None


class Engine:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self.spec: ModelSpec | None = None
        self.pipe = None
        self.loads = 0

    @property
    def model_id(self) -> str | None:
        return self.spec.id if self.spec else None

    def ensure(self, spec: ModelSpec) -> bool:
        """Make ``spec`` the resident model; True when that took a load."""
        if self.spec == spec and self.pipe is not None:
            return False
        self.unload()  # free the old pipeline first: two resident models rarely fit
        try:
            self.pipe = families.load_pipeline(spec, self.device)
        except (torch.OutOfMemoryError, MemoryError):
            self.unload()
            raise OutOfMemory(f"out of memory while loading {spec.id} on {self.device}") from None
        except StudioError:
            raise
        except Exception as exc:  # a missing repo, a corrupt file: the slot stays usable
            self.unload()
            raise ModelLoadFailed(f"could not load {spec.id} from {spec.source}: {exc}", field="model") from None
        self.spec = spec
        self.loads += 1
        return True

    def unload(self) -> None:
        self.pipe, self.spec = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(
        self,
        spec: ModelSpec,
        request: GenerationRequest,
        on_step: OnStep = _ignore,
        on_stage: OnStage = _ignore,
    ) -> JobResult:
        """Load if needed, generate ``request.num_images`` images in one call, encode them as PNGs."""
        started = time.perf_counter()
        if self.spec != spec:
            on_stage("loading")
        loaded = self.ensure(spec)
        on_stage("generating")
        try:
            images = families.generate(self.pipe, spec, request, on_step)
        except JobCancelled:
            raise
        except (torch.OutOfMemoryError, MemoryError):
            # The pipeline may hold half-built activations: drop everything and start clean.
            self.unload()
            raise OutOfMemory(
                f"out of memory generating {request.width}x{request.height} x{request.num_images} with {spec.id} "
                f"on {self.device}; try a smaller size or fewer images"
            ) from None
        on_stage("encoding")
        pngs = [pngmeta.encode(image, request, seed, spec.label) for image, seed in zip(images, request.seeds)]
        return JobResult(request=request, images=pngs, duration_s=time.perf_counter() - started, loaded_model=loaded)
