"""``Settings``: command-line flags, each with a ``STUDIO_*`` environment variable as its default."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from studio import memory


BACKENDS = ("local", "ray")
DEFAULT_MAX_BATCH = 8  # images in one batched call: most of the gain of a batch, and its memory stays modest
MAX_BATCH = 64
MAX_BATCH_WINDOW_MS = 10_000.0  # a longer wait for companions than a job's own run is surely a mistake


def _env(name: str, default=None):
    return os.environ.get(f"STUDIO_{name}", default)


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _logins(text: str | None) -> list[tuple[str, str]]:
    """``"ann:secret,bob:hunter2"`` as ``[("ann", "secret"), ("bob", "hunter2")]``."""
    logins = []
    for number, entry in enumerate(_csv(text), start=1):
        user, colon, password = entry.partition(":")
        if not (user and colon and password):  # the message never echoes the entry: it may be a password
            raise argparse.ArgumentTypeError(f"login {number} must be USER:PASSWORD (logins are comma-separated)")
        logins.append((user, password))
    return logins


def _shares(text: str | None) -> dict[str, float]:
    """``"ci:0.5,ann:2"`` as ``{"ci": 0.5, "ann": 2.0}``: each owner's weight in fair share (default 1)."""
    shares: dict[str, float] = {}
    for number, entry in enumerate(_csv(text), start=1):
        name, colon, weight = entry.rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            value = 0.0
        if not (name and colon) or not value > 0:
            raise argparse.ArgumentTypeError(
                f"share {number} ({entry!r}) must be NAME:WEIGHT with a weight above 0, e.g. ci:0.5 or ann:2")
        shares[name] = value
    return shares


def _api_keys(text: str | None) -> str | None:
    """Checks ``--api-key``: one plain key, or ``NAME:KEY[,...]`` when it has a colon (see ``api_keys``)."""
    if text:
        api_keys(text)
    return text or None


def api_keys(text: str | None) -> dict[str, str | None]:
    """Each API key with the name of its owner: ``"ci:k1,ann:k2"`` gives ``{"k1": "ci", "k2": "ann"}``.

    A value without a colon is one plain key, owned by nobody (REST images then go to a shared
    folder): ``--api-key KEY`` works as it always did.
    """
    if not text:
        return {}
    if ":" not in text:
        return {text: None}
    keys: dict[str, str | None] = {}
    for number, entry in enumerate(_csv(text), start=1):
        name, colon, key = entry.partition(":")
        if not (name and colon and key):  # never echo the entry: it holds a key
            raise argparse.ArgumentTypeError(f"API key {number} must be NAME:KEY (keys are comma-separated)")
        if key in keys:
            raise argparse.ArgumentTypeError(f"API key {number} repeats an earlier key; each key has one owner")
        keys[key] = name
    return keys


@dataclass
class Settings:
    host: str = "0.0.0.0"
    port: int = 7860
    devices: list[str] = field(default_factory=list)  # empty: every visible GPU, else one CPU slot
    num_gpus: int | None = None
    models_dir: Path | None = None
    lora_dir: Path = Path("loras")  # the LoRA library: .safetensors files (subfolders too)
    lora_cache: int = 16  # LoRA adapters each slot keeps loaded (least recently used out)
    preload: list[str] = field(default_factory=list)
    max_queue: int = 32
    queue_wait_s: float = 10.0  # past --max-queue a job waits this long for a place before a 429; 0 refuses at once
    job_timeout_s: float = 600.0
    load_timeout_s: float = 900.0  # a model load (disk to device) that takes longer is stuck: its worker is replaced
    api_key: str | None = None  # one plain key, or "name:key,..." (``api_keys`` reads it)
    ui_auth: list[tuple[str, str]] = field(default_factory=list)  # logins for the web UI and the Gradio API
    ui_admins: list[str] = field(default_factory=list)  # logins that see every login's images
    outputs_dir: Path = Path("outputs")
    ram_cache_gb: float = 0.0
    compile: bool = False
    step_cache: bool = False
    memory_plan: str = "auto"  # studio/memory.py: auto picks per model and device; a named plan for every model
    gpu_memory_gb: float | None = None  # the most device memory the studio may use on each GPU; None: all of it
    backend: str = "local"  # "local": one worker process per device here; "ray": replicas on a Ray cluster
    ray_address: str | None = None  # "auto" (a running cluster), "ray://host:10001"; None: a local Ray
    replicas: int | None = None  # Ray: this many replicas (default: one per GPU of the cluster, else one)
    min_replicas: int | None = None  # Ray: autoscale between these two instead
    max_replicas: int | None = None
    offline: bool = False  # never reach for the hub (also HF_HUB_OFFLINE=1): models not on disk are refused
    keep_days: float = 0.0  # delete saved images older than this; 0 keeps them all
    keep_images: int = 0  # keep only the newest this many images per owner's folder; 0 keeps them all
    fair_share: bool = True  # the next job goes to the owner with the least recent service (studio.fairshare)
    shares: dict[str, float] = field(default_factory=dict)  # --share: owner -> weight in fair share (default 1)
    max_queue_per_user: int = 0  # jobs one owner may have waiting (queued, in the waiting room, downloading); 0: no limit
    max_running_per_user: int = 0  # jobs of one owner running at once; 0: no limit
    batch_window_ms: float = 0.0  # a batchable job waits this long for companions (studio.batching); 0: no batching
    max_batch: int = DEFAULT_MAX_BATCH  # the most images one batched pipeline call makes
    # Test-only fault injection: "module:function" that every worker calls with (slot_index, device)
    # before it loads anything (tests/faults.py). No flag or environment variable sets it; leave it None.
    fault_hook: str | None = None

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        parser = build_parser()
        args = parser.parse_args(argv)
        problem = models_dir_problem(args.models_dir)
        if problem:  # one line and exit 2, like any bad flag, before anything starts
            parser.exit(2, f"{parser.prog}: error: {problem}\n")
        if args.memory_plan not in memory.CHOICES:  # STUDIO_MEMORY_PLAN skips argparse's check of choices
            parser.error(f"--memory-plan: {args.memory_plan!r} is not one of {', '.join(memory.CHOICES)}")
        admins = _csv(args.ui_admin)
        unknown = sorted(set(admins) - {user for user, _ in args.ui_auth or []})
        if unknown:
            parser.error(f"--ui-admin {', '.join(unknown)}: not a login of --ui-auth")
        if args.backend == "ray" and args.batch_window_ms:  # a replica runs one job at a time: nothing to batch
            parser.error(f"--batch-window-ms {args.batch_window_ms:g}: the Ray backend does not batch jobs (each "
                         f"replica runs one job at a time); leave it at 0 (or unset STUDIO_BATCH_WINDOW_MS) "
                         f"with --backend ray")
        return cls(
            host=args.host,
            port=args.port,
            devices=_csv(args.devices),
            num_gpus=args.num_gpus,
            models_dir=Path(args.models_dir) if args.models_dir else None,
            lora_dir=Path(args.lora_dir),
            lora_cache=args.lora_cache,
            preload=_csv(args.preload),
            max_queue=args.max_queue,
            queue_wait_s=args.queue_wait,
            job_timeout_s=args.job_timeout,
            load_timeout_s=args.load_timeout,
            api_key=args.api_key or None,
            ui_auth=args.ui_auth or [],
            ui_admins=admins,
            outputs_dir=Path(args.outputs_dir),
            ram_cache_gb=args.ram_cache_gb,
            compile=args.compile,
            step_cache=args.step_cache,
            memory_plan=args.memory_plan,
            gpu_memory_gb=args.gpu_memory_gb or None,
            backend=args.backend,
            ray_address=args.ray_address or None,
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            offline=args.offline,
            keep_days=args.keep_days,
            keep_images=args.keep_images,
            fair_share=args.fair_share,
            shares=args.share or {},
            max_queue_per_user=args.max_queue_per_user,
            max_running_per_user=args.max_running_per_user,
            batch_window_ms=args.batch_window_ms,
            max_batch=args.max_batch,
        )


def _non_negative(kind):
    """An argparse type: a number of ``kind`` that is 0 or more."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
        return value

    return parse


def models_dir_problem(models_dir: str | Path | None) -> str | None:
    """Why ``models_dir`` cannot be the models folder, or None. A typo must not fall back to the hub."""
    if models_dir is None or Path(models_dir).is_dir():
        return None
    return (f"--models-dir {models_dir}: no such folder (leave the flag out to load models from the Hugging Face "
            f"cache and hub; `python -m studio.tiny {models_dir}` builds tiny test models there)")


def _flag(text: str | None) -> bool:
    return (text or "").lower() in {"1", "true", "yes", "on"}


def _off(text: str | None) -> bool:
    return (text or "").lower() in {"0", "false", "no", "off"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Image Studio: text-to-image UI, Gradio API and OpenAI-compatible REST")
    parser.add_argument("--host", default=_env("HOST", "0.0.0.0"))
    parser.add_argument(
        "--port", type=int, default=int(_env("PORT", os.environ.get("GRADIO_SERVER_PORT", "7860")))
    )
    parser.add_argument("--devices", default=_env("DEVICES"), help="comma list, e.g. cuda:0,cuda:1 or cpu,cpu")
    parser.add_argument("--num-gpus", type=int, default=_env("NUM_GPUS") and int(_env("NUM_GPUS")))
    parser.add_argument("--models-dir", default=_env("MODELS_DIR"), help="local folder of <model-id>/ pipelines")
    parser.add_argument("--lora-dir", default=_env("LORA_DIR", "loras"),
                        help="folder of LoRA .safetensors files (default loras/); GET /v1/loras lists them")
    parser.add_argument("--lora-cache", type=_at_least(8), default=_env("LORA_CACHE", "16"), metavar="N",
                        help="LoRAs each slot keeps loaded, least recently used out first (default 16, at least 8)")
    parser.add_argument("--preload", default=_env("PRELOAD"), help="model ids to load and warm at start")
    parser.add_argument("--max-queue", type=int, default=int(_env("MAX_QUEUE", "32")),
                        help="jobs that may wait for a slot (default 32)")
    parser.add_argument(
        "--queue-wait", type=_non_negative(float), default=_env("QUEUE_WAIT", "10"), metavar="SECONDS",
        help="past --max-queue, up to as many jobs again wait this long for a place before a 429 (default 10; 0: at once)",
    )
    parser.add_argument("--job-timeout", type=float, default=float(_env("JOB_TIMEOUT", "600")), help="seconds")
    parser.add_argument(
        "--load-timeout", type=_non_negative(float), default=_env("LOAD_TIMEOUT", "900"), metavar="SECONDS",
        help="a model load taking longer is stuck: the job fails and the worker is replaced (default 900; 0: no limit)",
    )
    parser.add_argument(
        "--api-key", type=_api_keys, default=_env("API_KEY"), metavar="KEY | NAME:KEY[,...]",
        help="require a bearer key on /v1 routes; named keys keep each owner's images in outputs/api/NAME",
    )
    parser.add_argument(
        "--ui-auth", type=_logins, default=_env("UI_AUTH"), metavar="USER:PASSWORD[,...]",
        help="require a login for the web UI and the Gradio API (gradio_client's auth=)",
    )
    parser.add_argument(
        "--ui-admin", default=_env("UI_ADMIN"), metavar="USER[,...]",
        help="logins of --ui-auth that may see every login's images (the others see only their own)",
    )
    parser.add_argument("--outputs-dir", default=_env("OUTPUTS_DIR", "outputs"))
    parser.add_argument("--ram-cache-gb", type=float, default=float(_env("RAM_CACHE_GB", "0")))
    parser.add_argument("--compile", action="store_true", default=_flag(_env("COMPILE")), help="torch.compile (CUDA)")
    parser.add_argument(
        "--keep-days", type=_non_negative(float), default=_env("KEEP_DAYS", "0"), metavar="DAYS",
        help="delete saved images older than DAYS (at start and after each run); 0 keeps them (default)",
    )
    parser.add_argument(
        "--keep-images", type=_non_negative(int), default=_env("KEEP_IMAGES", "0"), metavar="N",
        help="keep only the newest N images in each owner's outputs folder; 0 keeps them all (default)",
    )
    parser.add_argument(
        "--no-fair-share", dest="fair_share", action="store_false", default=not _off(_env("FAIR_SHARE")),
        help="first come, first served instead of fair share between owners (API keys, logins, addresses)",
    )
    parser.add_argument(
        "--share", type=_shares, default=_env("SHARE"), metavar="NAME:WEIGHT[,...]",
        help="an owner's weight in fair share (default 1): ci:0.5 gets half a share, ann:2 two",
    )
    parser.add_argument(
        "--max-queue-per-user", type=_non_negative(int), default=_env("MAX_QUEUE_PER_USER", "0"), metavar="N",
        help="jobs one owner may have waiting, downloads included; past it a 429 (default 0: no limit)",
    )
    parser.add_argument(
        "--max-running-per-user", type=_non_negative(int), default=_env("MAX_RUNNING_PER_USER", "0"), metavar="N",
        help="jobs of one owner running at once; the others wait their turn (default 0: no limit)",
    )
    parser.add_argument(
        "--batch-window-ms", type=_between(0.0, MAX_BATCH_WINDOW_MS), default=_env("BATCH_WINDOW_MS", "0"),
        metavar="MS", help="compatible text-to-image jobs run as one pipeline call: a job waits up to MS for "
        "companions (default 0: no batching; the local backend only)",
    )
    parser.add_argument(
        "--max-batch", type=_between(1, MAX_BATCH), default=_env("MAX_BATCH", str(DEFAULT_MAX_BATCH)),
        metavar="IMAGES",
        help=f"the most images one batched call makes (default {DEFAULT_MAX_BATCH}, 1..{MAX_BATCH})",
    )
    parser.add_argument("--step-cache", action="store_true", default=_flag(_env("STEP_CACHE")), help="first-block cache")
    parser.add_argument(
        "--memory-plan", choices=memory.CHOICES, default=_env("MEMORY_PLAN", memory.AUTO),
        help="how weights sit on a device: auto (the first plan that fits each model), full, offload-encoders, fp8, "
        "group-offload, sequential (the last two: CUDA only); a model's memory_plan in the catalog wins",
    )
    parser.add_argument(
        "--gpu-memory-gb", type=_non_negative(float), default=_env("GPU_MEMORY_GB", "0"), metavar="GB",
        help="use at most GB GiB of each GPU (enforced with torch.cuda.set_per_process_memory_fraction); 0: all",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=_env("BACKEND", "local"),
        help="local: one worker process per device; ray: Ray Serve replicas, one GPU each (needs ray[serve])",
    )
    parser.add_argument("--ray-address", default=_env("RAY_ADDRESS"), help="auto, or ray://HOST:10001 (--backend ray)")
    parser.add_argument("--replicas", type=_positive, default=_env("REPLICAS"),
                        help="Ray replicas (default: one per GPU in the cluster, else one)")
    parser.add_argument("--min-replicas", type=_positive, default=_env("MIN_REPLICAS"),
                        help="autoscale the Ray replicas between --min-replicas and --max-replicas")
    parser.add_argument("--max-replicas", type=_positive, default=_env("MAX_REPLICAS"))
    parser.add_argument(
        "--offline", action="store_true", default=_flag(_env("OFFLINE")),
        help="use only models on disk (as HF_HUB_OFFLINE=1); others are refused with the `pull` command to run",
    )
    return parser


def _at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {low}, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def _between(low, high):
    """An argparse type: a number from ``low`` to ``high`` (a whole number when they are ints)."""
    kind = type(low)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'} "
                                             f"from {low:g} to {high:g}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, not {text}")
        return value

    return parse


_positive = _at_least(1)
