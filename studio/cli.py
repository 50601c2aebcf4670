"""``python -m studio generate / models / pull``: images from a script (in-process, one device), the
catalog with what is on disk, and model downloads into the Hugging Face cache."""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from studio import hub, hublora, memory, pngmeta, weights
from studio.catalog import LORA_DIR, load_catalog
from studio.config import models_dir_problem
from studio.errors import InvalidRequest, StudioError
from studio.schemas import allowed_range, parse_size, request_fields, value_type
from studio.terminal import quiet_libraries

# The output file's suffix picks its format; every format keeps the generation parameters.
SUFFIX_FORMATS = {"": "png", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
MODELS_DIR_HELP = "local folder of <model-id>/ pipelines (default: STUDIO_MODELS_DIR)"


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio")
    models_dir = os.environ.get("STUDIO_MODELS_DIR") or None  # the server's variable: one `export` serves both
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate images to PNG (or JPEG, WebP) files")
    add_request_flags(gen)
    gen.add_argument("--size", type=_size, default=None, help="WxH, e.g. 1024x768")
    gen.add_argument("--models-dir", default=models_dir, help=MODELS_DIR_HELP)
    gen.add_argument("--lora-dir", default=os.environ.get("STUDIO_LORA_DIR") or str(LORA_DIR),
                     help="folder of LoRA .safetensors files (default loras/, or STUDIO_LORA_DIR)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    gen.add_argument("--memory-plan", choices=memory.CHOICES, default=os.environ.get("STUDIO_MEMORY_PLAN") or memory.AUTO,
                     help="how the weights sit on the device, as the server's flag (default auto: the first that fits)")
    gen.add_argument("--gpu-memory-gb", type=float, default=None, metavar="GB", help="use at most GB GiB of the GPU")
    gen.add_argument("-o", "--output", required=True,
                     help="OUT.png (or .jpg, .webp); several images become OUT-1.png, OUT-2.png ...")
    listing = commands.add_parser("models", help="list the catalog: on disk or not, download size")
    listing.add_argument("--models-dir", default=models_dir, help=MODELS_DIR_HELP)
    pull = commands.add_parser("pull", help="download models into the Hugging Face cache (HF_HOME), resumable")
    pull.add_argument("ids", nargs="*", metavar="ID", help="model ids or aliases")
    pull.add_argument("--all", action="store_true", help="every model of the catalog")
    return parser


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each ``GenerationRequest`` field that declares one (``Faces.flag``), typed, described and
    bounded as declared there; unset, the field keeps its default (the model's, for most)."""
    for name, info, faces in request_fields():
        if faces.flag is None:
            continue
        allowed = allowed_range(name)
        help_text = info.description + (f" (allowed {allowed})" if allowed else "")
        kind = value_type(info)
        if kind is bool:
            parser.add_argument(faces.flag, dest=name, action="store_true", default=None, help=help_text)
        elif kind is tuple:  # a list: the flag repeats, each value read by the field's own validator
            parser.add_argument(faces.flag, dest=name, action="append", default=None,
                                metavar=faces.flag.lstrip("-").upper(), help=f"{help_text} Repeatable.")
        else:
            parser.add_argument(faces.flag, dest=name, type=kind, default=None, required=info.is_required(),
                                metavar=faces.flag.lstrip("-").replace("-", "_").upper(), help=help_text)


def request_flags(args) -> dict:
    """The request fields given on the command line, by name."""
    return {name: getattr(args, name) for name, _, faces in request_fields()
            if faces.flag is not None and getattr(args, name) is not None}


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(1, count + 1)]


def output_format(output: str) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        allowed = ", ".join(s for s in SUFFIX_FORMATS if s)
        raise InvalidRequest(f"output: '{suffix}' files are not supported; use {allowed}", field="output")
    return SUFFIX_FORMATS[suffix]


def generate(args) -> int:
    image_format = output_format(args.output)
    catalog = load_catalog(args.models_dir, lora_dir=args.lora_dir)
    width, height = args.size or (None, None)
    spec, request = catalog.parse(dict(request_flags(args), width=width, height=height))
    if not hub.offline() and not _on_disk(spec):
        _pull_one(spec)  # with its progress bar, before torch loads anything
    request = fetch_hub_loras(catalog, spec, request)

    quiet_libraries()  # torch only after the input is known to be good; our step counter is the progress
    from studio.engine import Engine
    from studio.speed import EngineOptions

    device = args.device or _default_device()
    options = EngineOptions(memory_plan=args.memory_plan, gpu_memory_gb=args.gpu_memory_gb)
    result = Engine(device, options).run(spec, request, on_step=lambda step, total: print(f"step {step}/{total}", file=sys.stderr))
    for path, png, seed in zip(output_paths(args.output, len(result.images)), result.images, result.seeds):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pngmeta.convert(png, image_format, quality=95))
        print(f"{path}  seed={seed}")
    return 0


def fetch_hub_loras(catalog, spec, request):
    """The request's hub LoRAs not in the cache, downloaded (the server's download phase does this there)."""
    for lora in request.loras:
        if lora._path is None:
            print(f"downloading the LoRA {lora.name}", file=sys.stderr)
            try:
                hublora.download(*hublora.parse(lora.name))
            except Exception as exc:  # noqa: BLE001 - in words, naming loras
                raise hublora.explain(exc, lora.name) from None
    return catalog.check_loras(spec, request)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def list_models(args) -> int:
    """One line per model: id, label, repo, defaults, then whether it is on disk and its download size."""
    catalog = load_catalog(args.models_dir)
    specs = list(catalog)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one hub listing per repo: ask for them together
        disk = list(pool.map(hub.disk_status, specs))
    for spec, (state, _, plan) in zip(specs, disk):
        aliases = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        d = spec.defaults
        print(f"{spec.id:<16} {spec.label}{aliases}: {spec.source}, {d.width}x{d.height}, {d.steps} steps; "
              f"{memory.describe(spec.memory(weights.measure(spec, plan)))}; {state}")
    problems = {problem for _, problem, _ in disk if problem}
    for problem in sorted(problems):
        print(f"note: {problem}", file=sys.stderr)
    return 0


def pull(args) -> int:
    """Download each model (all with --all); a failed model does not stop the others; exit 2 if any failed."""
    catalog = load_catalog()
    if args.all == bool(args.ids):
        raise InvalidRequest("pull: name model ids, or --all for the whole catalog", field="ids")
    specs = list(catalog) if args.all else [catalog.get(model_id) for model_id in args.ids]
    failed = 0
    for spec in specs:
        try:
            _pull_one(spec)
        except StudioError as exc:
            failed += 1
            print(f"error: {spec.id}: {exc.message}", file=sys.stderr)
    return 2 if failed else 0


def _on_disk(spec) -> bool:
    try:
        return spec.local_dir is not None or hub.plan_model(spec, online=False).missing() == 0
    except StudioError:  # no listing in the cache: never downloaded
        return False


def _pull_one(spec) -> None:
    plan = hub.plan_model(spec)
    missing = plan.missing()
    if not missing:
        print(f"{spec.id}: on disk ({hub.format_size(plan.total)})")
        return
    bar = ProgressBar(sys.stderr)
    started = time.monotonic()
    try:
        hub.download(spec, plan, bar.show)
    except KeyboardInterrupt:
        bar.end()
        print(f"{spec.id}: interrupted; finished files stay in the cache: run the same command to go on",
              file=sys.stderr)
        raise
    bar.end()
    took = hub.format_duration(time.monotonic() - started)
    print(f"{spec.id}: on disk ({hub.format_size(plan.total)}; downloaded {hub.format_size(missing)} in {took})")


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; elsewhere (logs, CI) a line every 10 s."""

    WIDTH = 24

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.last_line = 0.0
        self.drawn = False

    def show(self, progress: hub.Progress) -> None:
        filled = int(self.WIDTH * progress.done / progress.total) if progress.total else self.WIDTH
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {progress.describe()}"
        if self.tty:
            self.stream.write(f"\r{line:<100}")
            self.drawn = True
        elif time.monotonic() - self.last_line >= 10:
            self.stream.write(line + "\n")
            self.last_line = time.monotonic()
        self.stream.flush()

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


COMMANDS = {"generate": generate, "models": list_models, "pull": pull}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = models_dir_problem(getattr(args, "models_dir", None))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
