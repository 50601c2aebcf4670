"""Model weights from the Hugging Face hub: what each catalog model needs, what is on disk, the download.

Torch-free (huggingface_hub only), so the server process and ``python -m studio pull`` use it.

A model's *plan* is exactly the files its ``from_pretrained`` reads: the rule of diffusers'
``DiffusionPipeline.download`` (the ``model_index.json`` components, safetensors only, the
catalog's variant where the component has it), applied to the repo's file listing, or the few
component folders a family loads one by one (Stable Cascade's decoder), as the family record's
``hub`` says. Files land in the
standard cache (``HF_HOME`` / ``HF_HUB_CACHE``) through ``snapshot_download``, which also
stores the listing that diffusers needs to load the model offline later.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio import families
from studio.catalog import ModelSpec
from studio.errors import ModelGated, ModelLoadFailed, ModelUnavailable, NotEnoughDisk, StudioError

HUB_URL = "https://huggingface.co"

# diffusers' weight file names (diffusers.utils.constants and transformers'), split as diffusers does.
_WEIGHT_PREFIXES = ("diffusion_pytorch_model", "model", "weights", "pytorch_model")
_WEIGHT_SUFFIXES = ("bin", "safetensors", "onnx", "pb")
_WEIGHT_EXTENSIONS = ("bin", "safetensors", "onnx", "pb", "flashpack")
_IGNORED = ("*.bin", "*.msgpack", "*.onnx", "*.pb")  # use_safetensors=True, no ONNX pipeline
_ROOT_FILES = ("scheduler_config.json", "config.json", "model_index.json", "pipeline.py")
_AUX_FILES = (  # diffusers' TRANSFORMERS_COMPONENT_AUX_FILES: a flat repo's tokenizer and processor files
    "chat_template.jinja", "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "tokenizer.json", "tokenizer_config.json",
)
_SHARD = r"\d{5}-of-\d{5}"


@dataclass(frozen=True)
class RepoLoad:
    """One repo as a family loads it: the whole pipeline (less ``passed`` components), or ``folders`` only."""

    repo: str
    revision: str | None = None
    variant: str | None = None
    passed: tuple[str, ...] = ()
    folders: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RepoPlan:
    load: RepoLoad
    commit: str
    files: dict[str, int]  # path in the repo -> size in bytes

    @property
    def total(self) -> int:
        return sum(self.files.values())


@dataclass(frozen=True)
class ModelPlan:
    model: str
    repos: tuple[RepoPlan, ...]

    @property
    def total(self) -> int:
        return sum(repo.total for repo in self.repos)

    def on_disk(self, cache_dir: Path | None = None) -> int:
        """Bytes of the plan already in the cache."""
        return sum(size for repo in self.repos for size in _cached_sizes(repo, cache_dir).values())

    def missing(self, cache_dir: Path | None = None) -> int:
        return self.total - self.on_disk(cache_dir)


@dataclass
class Progress:
    """A download's progress, as every face reports it (``describe()`` is the UI's status line)."""

    model: str
    label: str
    done: int = 0
    total: int = 0
    speed: float = 0.0  # bytes per second, smoothed
    started: float = field(default_factory=time.monotonic)

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.speed if self.speed > 0 and self.total >= self.done else None

    def describe(self) -> str:
        """``Downloading FLUX.1 [schnell]: 12.4 of 33.9 GB, 85 MB/s, about 4 min``."""
        text = f"Downloading {self.label}: {format_bytes(self.done, self.total)}"
        if self.speed > 0:
            text += f", {format_size(self.speed)}/s"
        eta = self.eta_s
        if eta is not None and self.done < self.total:
            text += f", about {format_duration(eta)}"
        return text


def format_size(size: float) -> str:
    """``1.5 GB``, ``85 MB``, ``512 B`` (decimal units, like the hub's own pages)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def format_bytes(done: int, total: int) -> str:
    """``12.4 of 33.9 GB``: both in the total's unit."""
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if total >= s), ("B", 1))
    digits = 0 if scale == 1 else 1
    return f"{done / scale:.{digits}f} of {total / scale:.{digits}f} {unit}"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def repo_loads(spec: ModelSpec) -> list[RepoLoad]:
    """The hub repos a model loads from, as its family's record says its loader reads them; none for a
    local models folder."""
    if spec.local_dir is not None:
        return []
    return [
        RepoLoad(getattr(spec, repo.source), spec.revision if repo.pinned else None, spec.variant, repo.passed,
                 repo.folders)
        for repo in families.FAMILIES[spec.family].hub
    ]


def select_files(filenames: set[str], model_index: dict, load: RepoLoad) -> set[str]:
    """The files ``from_pretrained`` fetches from a repo listing (diffusers 0.42's ``download`` rule)."""
    filenames = set(filenames) - set(model_index.get("_ignore_files", []))
    folders = [key for key, value in model_index.items() if isinstance(value, list) and key != "_class_name"]
    if load.folders is not None:
        folders = [folder for folder in folders if folder in load.folders]
        filenames = {f for f in filenames if "/" not in f or f.split("/")[0] in load.folders}
    model_folders = {
        f.rsplit("/", 1)[0] for f in filenames
        if "/" in f and f.endswith(_WEIGHT_EXTENSIONS) and f.rsplit("/", 1)[0] in folders
    }
    allow = sorted(_variant_weights(filenames, load.variant))
    allow += [f"{folder}/*" for folder in folders if folder not in model_folders]
    allow += [f"{folder}/config.json" for folder in model_folders]
    allow += list(_ROOT_FILES)
    allow = [p for p in allow if not (p.count("/") == 1 and p.split("/")[0] in load.passed)]
    allow += list(_AUX_FILES)
    if load.folders is not None:  # a component load reads its folders and the pipeline's index only
        allow = [p for p in allow if "/" in p or p == "model_index.json"]
    ignore = list(_IGNORED) + [f"{pattern}.index.*json" for pattern in _IGNORED]
    allowed = [re.compile(fnmatch.translate(p)) for p in allow]
    ignored = [re.compile(fnmatch.translate(p)) for p in ignore]
    return {
        f for f in filenames
        if not any(p.match(f) for p in ignored) and any(p.match(f) for p in allowed)
    }


def _variant_weights(filenames: set[str], variant: str | None) -> set[str]:
    """diffusers' ``variant_compatible_siblings``: per component, the variant's weights if it has them."""
    prefixes, suffixes = "|".join(_WEIGHT_PREFIXES), "|".join(_WEIGHT_SUFFIXES)
    plain_file = re.compile(rf"({prefixes})(-{_SHARD})?\.({suffixes})$")
    plain_index = re.compile(rf"({prefixes})\.({suffixes})\.index\.json")
    if variant:
        variant_file = re.compile(rf"({prefixes})\.({variant}|{variant}-{_SHARD})\.({suffixes})$")
        variant_index = re.compile(rf"({prefixes})\.({suffixes})\.index\.{variant}\.json$")
        legacy_file = re.compile(rf".*-{_SHARD}\.{variant}\.[a-z]+$")
        legacy_index = re.compile(rf"({prefixes})\.({suffixes})\.{variant}\.index\.json$")
    components: dict[str, list[str]] = {}
    for name in filenames:
        parts = name.split("/")
        components.setdefault(parts[0] if len(parts) == 2 else "", []).append(name)
    chosen = set()
    for names in components.values():
        names = [n for n in names if not any(n.endswith(p.lstrip("*.")) for p in _IGNORED)]

        def matching(pattern, names=names):
            return {n for n in names if pattern.match(n.split("/")[-1])}

        if variant and (matching(variant_file) or matching(legacy_file)):
            if matching(variant_file):
                chosen |= matching(variant_file) | matching(variant_index)
            else:
                chosen |= matching(legacy_file) | matching(legacy_index)
        else:
            chosen |= matching(plain_file) | matching(plain_index)
    return chosen


def cache_dir() -> Path:
    """The standard hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``), as huggingface_hub resolves it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _storage(repo: str, cache: Path | None) -> Path:
    return (cache or cache_dir()) / ("models--" + repo.replace("/", "--"))


def _cached_sizes(repo: RepoPlan, cache: Path | None) -> dict[str, int]:
    snapshot = _storage(repo.load.repo, cache) / "snapshots" / repo.commit
    return {path: size for path, size in repo.files.items() if (snapshot / path).is_file()}


def plan_model(spec: ModelSpec, *, online: bool | None = None, cache: Path | None = None) -> ModelPlan:
    """The model's files and sizes: from the hub when ``online`` (default: unless HF_HUB_OFFLINE),
    else from the listing cached by an earlier download. Raises ``ModelUnavailable`` in plain words."""
    online = (not offline()) if online is None else online
    repos = []
    for load in repo_loads(spec):
        try:
            repos.append(_plan_repo(load, online, cache))
        except StudioError:
            raise
        except Exception as exc:
            raise explain(exc, spec, online=online) from None
    return ModelPlan(spec.id, tuple(repos))


def _plan_repo(load: RepoLoad, online: bool, cache: Path | None) -> RepoPlan:
    from huggingface_hub import HfApi, get_cached_repo_tree, hf_hub_download

    cache = cache or cache_dir()
    if online:
        api = HfApi()
        commit = api.model_info(load.repo, revision=load.revision).sha
        listing = {
            entry.path: entry.size
            for entry in api.list_repo_tree(load.repo, revision=commit, recursive=True)
            if hasattr(entry, "size") and hasattr(entry, "blob_id")
        }
    else:
        tree = get_cached_repo_tree(load.repo, revision=load.revision, cache_dir=cache)
        listing = {entry.path: entry.size for entry in tree}
        commit = (_storage(load.repo, cache) / "refs" / (load.revision or "main")).read_text().strip()
        if re.fullmatch(r"[0-9a-f]{40}", load.revision or ""):
            commit = load.revision
    index_file = hf_hub_download(
        load.repo, "model_index.json", revision=commit, cache_dir=cache, local_files_only=not online
    )
    model_index = json.loads(Path(index_file).read_text())
    files = select_files(set(listing), model_index, load)
    return RepoPlan(load, commit, {path: listing[path] for path in sorted(files)})


def explain(exc: BaseException, spec: ModelSpec, *, online: bool = True) -> StudioError:
    """A hub or cache failure as one plain sentence of what happened and what to do."""
    from huggingface_hub.errors import (
        CachedRepoTreeNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import OfflineModeIsEnabled

    exc = _hub_cause(exc)
    repo = getattr(exc, "repo_id", None) or spec.repo
    pull = f"run `python -m studio pull {spec.id}` where the hub is reachable, or point --models-dir at a folder"
    pull += f" that holds {spec.id}/"
    if isinstance(exc, GatedRepoError):
        return ModelGated(
            f"{spec.label} ({repo}) is a gated model: open {HUB_URL}/{repo}, log in and accept its license, "
            f"then set HF_TOKEN to an access token of that account ({HUB_URL}/settings/tokens) and try again",
            field="model",
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelUnavailable(
            f"{spec.label}: revision '{spec.revision or 'main'}' of {repo} does not exist on the hub; "
            "fix the catalog's revision", field="model",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelUnavailable(
            f"{spec.label}: the repo {repo} does not exist on the hub (or is private: set HF_TOKEN to a token "
            f"with access); check {HUB_URL}/{repo}", field="model",
        )
    if not online or isinstance(exc, OfflineModeIsEnabled):
        return ModelUnavailable(f"{spec.label} is not on disk and the studio is offline: {pull}", field="model")
    if isinstance(exc, (CachedRepoTreeNotFoundError, LocalEntryNotFoundError)) or "not fully cached" in str(exc):
        reason = "files missing from the cache and no answer from the hub"
    else:
        reason = f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:120]
    return ModelUnavailable(
        f"{spec.label} is not on disk and the hub cannot be reached ({reason}): {pull}", field="model"
    )


def _hub_cause(exc: BaseException) -> BaseException:
    """The hub or network error behind ``exc`` (diffusers wraps it in an OSError), else ``exc``."""
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, EntryNotFoundError, HfHubHTTPError

    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (HfHubHTTPError, EntryNotFoundError, CachedRepoTreeNotFoundError, ConnectionError)):
            return current
        if type(current).__module__.split(".")[0] in ("httpx", "httpx2", "requests"):  # no connection
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc


def load_failure(exc: BaseException, spec: ModelSpec) -> StudioError:
    """A worker's failed ``from_pretrained`` in plain words: the hub's part explained, else the cause."""
    if spec.local_dir is None:
        cause = _hub_cause(exc)
        if cause is not exc or "local_files_only" in str(exc) or "not fully cached" in str(exc):
            return explain(cause, spec, online=not offline())
    where = f"the folder {spec.local_dir}" if spec.local_dir else spec.repo
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return ModelLoadFailed(f"could not load {spec.label} from {where}: {reason}", field="model")


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(plan: ModelPlan, cache: Path | None = None, free: Callable[[Path], int] | None = None) -> None:
    """Refuse a download the disk cannot hold; ``free`` (default ``free_bytes``) is injectable for tests."""
    cache = cache or cache_dir()
    needed, available = plan.missing(cache), (free or free_bytes)(cache)
    if needed > available:
        raise NotEnoughDisk(
            f"not enough disk space for {plan.model}: the download needs {format_size(needed)}, "
            f"{cache} has {format_size(available)} free", field="model",
        )


def download(
    spec: ModelSpec,
    plan: ModelPlan,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    cache: Path | None = None,
    free: Callable[[Path], int] | None = None,
    poll_s: float = 0.5,
) -> Progress:
    """Fetch what the plan misses into the cache, reporting byte progress every ``poll_s`` seconds.

    huggingface_hub resumes a file after a dropped connection (ranged GET); files finished before
    a Ctrl+C or a crash stay in the cache, so the next run fetches only the rest. The fetching runs
    in a thread of its own, so a Ctrl+C here is not held up by the files in flight: their partial
    copies are removed (this huggingface_hub cannot resume them; a file that starts in the moment
    before the process ends may still leave one) and ``KeyboardInterrupt`` goes on.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    cache = cache or cache_dir()
    check_disk(plan, cache, free)
    disable_progress_bars()  # the progress is ours: one line per model, not one bar per file
    progress = Progress(spec.id, spec.label, done=plan.on_disk(cache), total=plan.total)
    partials_before = set(_partials(plan, cache))
    failure: list[BaseException] = []

    def fetch():
        try:
            for repo in plan.repos:
                missing = [path for path in repo.files if path not in _cached_sizes(repo, cache)]
                if missing:
                    snapshot_download(
                        repo.load.repo, revision=repo.load.revision or None, cache_dir=cache,
                        allow_patterns=[glob_escape(path) for path in missing],
                    )
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            failure.append(exc)

    fetcher = threading.Thread(target=fetch, name=f"download-{spec.id}", daemon=True)
    fetcher.start()
    last_done, last_time = progress.done, time.monotonic()
    try:
        while fetcher.is_alive():
            fetcher.join(poll_s)
            now = time.monotonic()
            # Never backwards: a file renamed from partial to finished between two looks counts in neither.
            progress.done = max(progress.done, min(progress.total, _bytes_on_disk(plan, cache)))
            rate = (progress.done - last_done) / max(now - last_time, 1e-6)
            progress.speed = rate if progress.speed == 0 else 0.7 * progress.speed + 0.3 * rate
            last_done, last_time = progress.done, now
            if on_progress and fetcher.is_alive():
                on_progress(progress)
    except KeyboardInterrupt:
        for partial in set(_partials(plan, cache)) - partials_before:
            partial.unlink(missing_ok=True)
        raise
    if failure:
        exc = failure[0]
        raise exc if isinstance(exc, StudioError) else explain(exc, spec) from None
    progress.done = plan.on_disk(cache)
    if on_progress:
        on_progress(progress)
    if progress.done < progress.total:
        raise ModelUnavailable(
            f"{spec.label}: the download ended with {format_bytes(progress.done, progress.total)} on disk; "
            f"run `python -m studio pull {spec.id}` again to fetch the rest", field="model",
        )
    return progress


def glob_escape(path: str) -> str:
    """A file name as an fnmatch pattern that matches only itself."""
    return re.sub(r"([\[\]*?])", r"[\1]", path)


def _partials(plan: ModelPlan, cache: Path) -> list[Path]:
    """The partial files being written for the plan's repos (``blobs/*.incomplete``)."""
    partials = []
    for repo in plan.repos:
        blobs = _storage(repo.load.repo, cache) / "blobs"
        partials += blobs.glob("*.incomplete") if blobs.is_dir() else []
    return partials


def _bytes_on_disk(plan: ModelPlan, cache: Path) -> int:
    """Finished files of the plan plus the partial files being written."""
    done = plan.on_disk(cache)
    for partial in _partials(plan, cache):
        try:
            done += partial.stat().st_size
        except FileNotFoundError:  # finished (renamed) between the listing and the stat
            pass
    return done


def disk_status(spec: ModelSpec) -> tuple[str, str | None, ModelPlan | None]:
    """``("not on disk, download 6.9 GB", None, plan)`` and the like: why the hub could not tell, if so, and
    the plan when there is one (its file sizes are the model's before a download).

    Asks the hub for the listing (unless offline) and falls back to the listing cached by an
    earlier download."""
    if spec.local_dir is not None:
        return "on disk (models folder)", None, None
    problem = None
    try:
        plan = plan_model(spec)
    except StudioError as exc:
        problem = exc.message
        try:
            plan = plan_model(spec, online=False)
        except StudioError:
            return "not on disk, download size unknown", problem, None
    return describe_plan(plan), problem, plan


def snapshot_paths(plan: ModelPlan, cache: Path | None = None) -> list[Path]:
    """The plan's safetensors files in the cache, where a download put them."""
    return [
        _storage(repo.load.repo, cache) / "snapshots" / repo.commit / path
        for repo in plan.repos for path in _cached_sizes(repo, cache) if path.endswith(".safetensors")
    ]


def describe_plan(plan: ModelPlan, cache: Path | None = None) -> str:
    done = plan.on_disk(cache)
    if done >= plan.total:
        return f"on disk, {format_size(plan.total)}"
    weights = [path for repo in plan.repos for path in _cached_sizes(repo, cache) if path.endswith(".safetensors")]
    if weights:  # not just the model_index.json that planning itself fetched
        return f"partly on disk ({format_bytes(done, plan.total)})"
    return f"not on disk, download {format_size(plan.total - done)}"
