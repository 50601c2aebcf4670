"""``Engine``: one device holding at most one resident pipeline, turning requests into PNGs.

The worker process wraps one Engine; the command line uses one in-process. With
``options.ram_cache_gb > 0`` a model swap parks the old pipeline in CPU RAM (``PipelineCache``)
instead of dropping it, so swapping back does not reread the disk. ``loads`` counts disk loads,
``cache_hits`` the swaps the cache served.

Imports torch, so never import this module in the parent server process.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from studio import families, hub, memory, placement, pngmeta, speed, weights
from studio.catalog import ModelSpec
from studio.errors import JobCancelled, OutOfMemory, StudioError
from studio.families import scheduling
from studio.families.batch import BatchedRequest
from studio.lorapipe import ResidentLoras
from studio.memory import Plan
from studio.schemas import GenerationRequest, JobResult, JobStage
from studio.speed import EngineOptions

log = logging.getLogger(__name__)

TILED_DECODE = "tiled-decode"  # the retry of a job whose VAE decode ran out of memory
DECODE_FRAMES = frozenset({"decode", "_decode"})  # AutoencoderKL's (and the others') decode functions

OnStep = Callable[[int, int], None]
OnStage = Callable[[str], None]
OnPreview = Callable[[int, int, int, bytes], None]  # (index, step, total, PNG of the preview)
OnMemberPreview = Callable[[int, int, int, int, bytes], None]  # (member of the batch, then as OnPreview)


def _ignore(*_args) -> None:
    return None


class PipelineCache:
    """Pipelines parked in CPU RAM (each with its memory plan), keyed by spec, at most ``max_bytes`` in all
    (an fp8 denoiser counted at its fp8 size); least recently used leave first."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[ModelSpec, tuple[object, int]] = OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    @property
    def model_ids(self) -> list[str]:
        """Oldest first."""
        return [spec.id for spec in self._entries]

    def __contains__(self, spec: ModelSpec) -> bool:
        return spec in self._entries

    def fits(self, size: int) -> bool:
        return 0 < size <= self.max_bytes

    def put(self, spec: ModelSpec, pipe, size: int) -> list[str]:
        """Park ``pipe``; returns the ids evicted to make room."""
        self._entries.pop(spec, None)
        self._entries[spec] = (pipe, size)
        evicted = []
        while self.bytes > self.max_bytes:
            old_spec, _ = self._entries.popitem(last=False)
            evicted.append(old_spec.id)
        return evicted

    def take(self, spec: ModelSpec):
        """Remove and return the parked pipeline of ``spec``, or None."""
        entry = self._entries.pop(spec, None)
        return entry[0] if entry else None

    def clear(self) -> None:
        self._entries.clear()


class Engine:
    def __init__(self, device: str = "cpu", options: EngineOptions | None = None):
        self.device = device
        self.options = options or EngineOptions()
        self.spec: ModelSpec | None = None
        self.pipe = None
        self.loads = 0  # pipelines read from disk
        self.cache_hits = 0  # swaps served from the RAM cache
        self.cache = PipelineCache(self.options.ram_cache_bytes)
        self._task_pipes: dict[str, object] = {}  # edit pipelines made from the resident one
        self.loras = ResidentLoras(self.options.lora_cache, hotswap=self.options.compile)
        self._on_cpu = torch.device(device).type == "cpu"
        self.plan: Plan | None = None  # the memory plan of the resident pipeline
        self.kept_plans: dict[str, Plan] = {}  # model -> the smaller plan an out-of-memory moved it to
        self.tiled_decode: set[str] = set()  # models whose decode ran out of memory: always tiled since
        limit_gpu_memory(device, self.options.gpu_memory_gb)

    @property
    def model_id(self) -> str | None:
        return self.spec.id if self.spec else None

    def ensure(self, spec: ModelSpec, request: GenerationRequest | None = None) -> bool:
        """Make ``spec`` the resident model; True when that took a swap (from the RAM cache or the disk).
        ``request``'s size and batch size the memory plan's headroom (default: the model's default size)."""
        if self.spec == spec and self.pipe is not None:
            return False
        parked = self.cache.take(spec)  # before parking the old one, which could otherwise evict it
        self._park()  # the old pipeline leaves the device first: two resident models rarely fit
        if parked is not None:
            pipe, plan = parked
            self.pipe, self.plan = self._to_device(pipe, spec), plan
            self.cache_hits += 1
        else:
            self.plan = self.plan_for(spec, request)
            self.pipe = self._load(spec, self.plan)
            self.loads += 1
        self.spec = spec
        return True

    def plan_for(self, spec: ModelSpec, request: GenerationRequest | None = None) -> Plan:
        """The memory plan ``spec`` loads with here: the catalog's or ``--memory-plan``, else the plan an
        out-of-memory left it on, else the first that fits the device's free memory (``memory.choose``)."""
        wanted = spec.memory_plan or self.options.memory_plan
        if wanted != memory.AUTO:
            placement.check(Plan(wanted), self.device, spec.family)
        elif spec.id in self.kept_plans:
            return self.kept_plans[spec.id]
        width, height, batch = ((request.width, request.height, request.num_images) if request
                                else (spec.defaults.width, spec.defaults.height, 1))
        choice = memory.choose(weights.measure(spec), self.device_memory(), width, height, batch, wanted,
                               memory.plans_for(spec.family))
        if choice.plan is None:
            raise OutOfMemory(f"{spec.id} cannot load on {self.device}: {choice.reason}")
        if choice.plan is not Plan.FULL or wanted != memory.AUTO:
            log.info("%s on %s: memory plan %s", spec.id, self.device, choice.reason)
        return choice.plan

    def device_memory(self) -> memory.Device:
        """What this engine's device has free for a load (capped by ``--gpu-memory-gb``), and the host's RAM."""
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if self._on_cpu or torch.device(self.device).type != "cuda":
            return memory.Device("cpu", host, host)
        free, _ = torch.cuda.mem_get_info(self.device)
        if self.options.gpu_memory_gb:
            free = min(free, int(self.options.gpu_memory_gb * memory.GIB) - torch.cuda.memory_reserved(self.device))
        return memory.Device("cuda", max(0, free), host)

    def task_pipe(self, task: str):
        """The resident model's pipeline for ``task``, made once per load with ``from_pipe`` (shared weights)."""
        if task not in self._task_pipes:
            self._task_pipes[task] = families.task_pipeline(self.pipe, self.spec.family, task)
        return self._task_pipes[task]

    def unload(self) -> None:
        """Drop the resident pipeline (the RAM cache keeps its own) and give its memory back."""
        self.pipe, self.spec, self.plan = None, None, None
        self._task_pipes.clear()
        self._free()

    def clear_cache(self) -> None:
        self.cache.clear()
        self._free()

    def run(
        self,
        spec: ModelSpec,
        request: GenerationRequest,
        on_step: OnStep = _ignore,
        on_stage: OnStage = _ignore,
        on_preview: OnPreview = _ignore,
    ) -> JobResult:
        """Load if needed, generate ``request.num_images`` images in one call, encode them as PNGs.

        ``request.previews`` previews of the first image, spread over the run, go to ``on_preview``.
        """
        started = time.perf_counter()
        reporter = StepReporter(on_step, [(0, request.previews)], lambda _member, *preview: on_preview(*preview))
        loaded, images, sampler = self.call(spec, request, reporter, on_stage)
        request = request.model_copy(update={"sampler": sampler})
        return JobResult(request=request, images=self.encode(spec, images, request),
                         duration_s=time.perf_counter() - started, loaded_model=loaded)

    def run_batch(
        self,
        spec: ModelSpec,
        requests: list[GenerationRequest],
        on_step: OnStep = _ignore,
        on_stage: OnStage = _ignore,
        on_preview: OnMemberPreview = _ignore,
    ) -> list[JobResult]:
        """Compatible text-to-image requests of a family that batches, as one pipeline call (the memory plan
        sized for all their images, an out-of-memory retried for the whole batch): one result per request,
        its own images with its own prompt and seeds in their metadata. Steps and stages are the batch's;
        ``on_preview(member, index, step, total, png)`` shows each member's own first image."""
        started = time.perf_counter()
        batch = BatchedRequest(requests)
        if not families.FAMILIES[spec.family].batches or batch.task != families.TEXT_TO_IMAGE:
            raise StudioError(f"{spec.id} cannot run {batch.task} jobs as one batch")
        reporter = StepReporter(on_step, list(zip(batch.first_images, (r.previews for r in requests))), on_preview)
        loaded, images, sampler = self.call(spec, batch, reporter, on_stage)
        results = []
        for request, own in zip(requests, batch.split(images)):
            request = request.model_copy(update={"sampler": sampler})
            results.append(JobResult(request=request, images=self.encode(spec, own, request),
                                     duration_s=time.perf_counter() - started, loaded_model=loaded))
        return results

    def call(self, spec: ModelSpec, request, reporter: StepReporter, on_stage: OnStage) -> tuple[bool, list, str]:
        """Load if needed and make the images of ``request`` (one request or a ``BatchedRequest``) in one pipeline call,
        an out-of-memory retried once on a smaller plan; whether it loaded, the images, the sampler that ran."""
        if self.spec != spec:
            on_stage(JobStage.LOADING)
        loaded = self.ensure(spec, request)
        on_stage(JobStage.GENERATING)
        try:
            images, sampler = self._generate(spec, request, reporter)
        except JobCancelled:
            raise
        except (torch.OutOfMemoryError, MemoryError) as exc:
            retry = self._smaller(spec, exc)
            if retry is None:
                self._out_of_memory(exc)
                raise OutOfMemory(
                    f"out of memory generating {request.width}x{request.height} x{request.num_images} with {spec.id} "
                    f"on {self.device}; try a smaller size or fewer images"
                ) from None
            images, sampler = self._retry(spec, request, retry, reporter)
        on_stage(JobStage.ENCODING)
        return loaded, images, sampler

    def encode(self, spec: ModelSpec, images: list, request: GenerationRequest) -> list[bytes]:
        """PNGs carrying ``request`` as it ran, each with its own seed."""
        changed = self.plan.value if self.plan in memory.CHANGES_WEIGHTS else None  # recorded where images differ
        return [pngmeta.encode(image, request, seed, spec.label, changed) for image, seed in zip(images, request.seeds)]

    def _generate(self, spec: ModelSpec, request, reporter: StepReporter) -> tuple[list, str]:
        """The images, and the name of the sampler that ran them (for the metadata)."""
        self.loras.apply(self.pipe, request.loras)  # edit pipelines share its modules, so its adapters
        pipe = self.task_pipe(request.task)
        if not speed.prepare(pipe, request) and spec.id in self.tiled_decode:
            speed.tile_vae(pipe)  # an out-of-memory in this model's decode moved it to tiles for good
        with scheduling.sampler(pipe, spec, request) as sampler, speed.step_cache_paused(pipe, request.task):
            images = families.generate(pipe, spec, request, reporter)
        return images, sampler

    # -- out of memory: once more on a smaller plan ----------------------------------------

    def _smaller(self, spec: ModelSpec, exc: BaseException) -> str | Plan | None:
        """What a job that ran out of memory is retried with, under ``auto`` only: ``TILED_DECODE`` when
        it failed in the VAE's decode (and tiles are not on yet), else the next smaller plan; None: no retry."""
        if (spec.memory_plan or self.options.memory_plan) != memory.AUTO or self.plan is None:
            return None
        if in_decode(exc) and spec.id not in self.tiled_decode and speed.can_tile(self.pipe):
            return TILED_DECODE
        return memory.next_plan(self.plan, torch.device(self.device).type, memory.plans_for(spec.family))

    def _retry(self, spec: ModelSpec, request, retry: str | Plan, reporter: StepReporter):
        """Run the job once more on ``retry``; the slot keeps it for the model when that works."""
        was = self.plan
        log.warning("%s on %s: out of memory on the %s plan; retrying once %s", spec.id, self.device, was,
                    "with a tiled VAE decode" if retry == TILED_DECODE else f"on the {retry} plan")
        if retry == TILED_DECODE:
            self.tiled_decode.add(spec.id)
            self._free()
        else:
            self.kept_plans[spec.id] = retry
            self.unload()  # the half-built activations and the old placement go; the retry loads afresh
        try:
            self.ensure(spec, request)
            return self._generate(spec, request, reporter)
        except (torch.OutOfMemoryError, MemoryError, OutOfMemory) as exc:
            # The smaller plan did not help: forget it, so the next job tries as it would have.
            self.tiled_decode.discard(spec.id) if retry == TILED_DECODE else self.kept_plans.pop(spec.id, None)
            self._out_of_memory(exc)
            raise OutOfMemory(
                f"out of memory generating {request.width}x{request.height} x{request.num_images} with {spec.id} "
                f"on {self.device}, on the {was} plan and again "
                + ("with a tiled VAE decode" if retry == TILED_DECODE else f"on the {retry} plan")
                + "; try a smaller size or fewer images"
            ) from None

    def _out_of_memory(self, exc: BaseException) -> None:
        """The pipeline may hold half-built activations: drop everything and start clean."""
        self.unload()
        if isinstance(exc, MemoryError):
            self.clear_cache()  # CPU RAM ran out: parked pipelines are the first thing to give back

    # -- swapping -------------------------------------------------------------------------

    def _load(self, spec: ModelSpec, plan: Plan):
        """Read ``spec`` from disk, apply the speed options, place it on the device as ``plan`` says."""
        try:
            pipe = placement.read(spec, self.device, plan)
            speed.optimize(pipe, spec, self.device, self.options)
            placement.place(pipe, plan, self.device, spec.family)
            return pipe
        except (torch.OutOfMemoryError, MemoryError) as exc:
            self.unload()
            if isinstance(exc, MemoryError):
                self.clear_cache()
            raise OutOfMemory(f"out of memory while loading {spec.id} on {self.device}") from None
        except StudioError:
            raise
        except Exception as exc:  # a missing repo, a corrupt file: the slot stays usable
            self.unload()
            raise hub.load_failure(exc, spec) from None

    def _to_device(self, pipe, spec: ModelSpec):
        """Bring a parked pipeline back (a no-op on CPU, where parked pipelines never left)."""
        if self._on_cpu:
            return pipe
        try:
            return pipe.to(self.device)
        except (torch.OutOfMemoryError, MemoryError):
            del pipe  # half on the device, half not: not worth keeping
            self.unload()
            raise OutOfMemory(f"out of memory while moving {spec.id} from RAM to {self.device}") from None

    def _park(self) -> None:
        """Move the resident pipeline into the RAM cache when it fits there, else drop it. An offloaded
        pipeline on a GPU is dropped: its hooks tie it to the device, and its bulk is in host RAM already."""
        pipe, spec, plan = self.pipe, self.spec, self.plan
        self.pipe, self.spec, self.plan = None, None, None
        self._task_pipes.clear()  # they hold the old model's components
        if pipe is None:
            return
        if self.cache.max_bytes > 0 and (self._on_cpu or plan is Plan.FULL):
            size = speed.pipeline_bytes(pipe)
            if self.cache.fits(size):
                try:
                    if not self._on_cpu:
                        pipe.to("cpu")
                    evicted = self.cache.put(spec, (pipe, plan), size)
                except MemoryError:
                    self.clear_cache()
                    evicted = []
                if evicted:
                    log.debug("RAM cache evicted %s to park %s", ", ".join(evicted), spec.id)
                if self._on_cpu and not evicted:
                    return  # nothing left the process: no memory to give back
            else:
                log.debug("%s (%d bytes) is larger than the RAM cache; dropped", spec.id, size)
        del pipe
        self._free()

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()



def in_decode(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside a VAE's decode (by the name of the frames it passed through)."""
    trace = exc.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_name in DECODE_FRAMES:
            return True
        trace = trace.tb_next
    return False


def limit_gpu_memory(device: str, gib: float | None) -> None:
    """``--gpu-memory-gb``: the CUDA allocator refuses this process more than ``gib`` of the device (a 24 GB
    card tried on a bigger one, or a card shared with another program)."""
    target = torch.device(device)
    if not gib or target.type != "cuda" or not torch.cuda.is_available():
        return
    index = target.index if target.index is not None else torch.cuda.current_device()  # the cap needs an index
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * memory.GIB / total), index)
    log.info("%s: at most %.1f GiB of %.1f GiB (--gpu-memory-gb)", device, gib, total / memory.GIB)


def preview_steps(count: int, total: int) -> set[int]:
    """The steps after which ``count`` previews are made: evenly spread, never after the last step
    (that one is the image itself); fewer when the run has fewer steps."""
    return {round(total * (i + 1) / (count + 1)) for i in range(count)} - {0, total}


class StepReporter:
    """The adapters' ``on_step`` with previews: progress after every step and, for each member of the call
    (one for a single job), ``count`` previews of its first image at evenly spread steps, for
    ``on_preview(member, index, step, total, png)``. ``previews``: (first image's index in the batch,
    count) per member."""

    def __init__(self, on_step: OnStep, previews: list[tuple[int, int]], on_preview: OnMemberPreview):
        self.on_step, self.previews, self.on_preview = on_step, previews, on_preview
        self.sent = [0] * len(previews)
        self._at: tuple[int, int] = (0, 0)

    def __call__(self, step: int, total: int) -> None:
        self._at = (step, total)
        self.on_step(step, total)

    def wants_preview(self, step: int, total: int) -> list[int]:
        """The batch indices of the images that get a preview after this step."""
        return [first for (first, count), sent in zip(self.previews, self.sent)
                if sent < count and step in preview_steps(count, total)]

    def preview(self, index: int, image) -> None:
        member = [first for first, _ in self.previews].index(index)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # small and made often: speed over size
        self.on_preview(member, self.sent[member], *self._at, buffer.getvalue())
        self.sent[member] += 1
