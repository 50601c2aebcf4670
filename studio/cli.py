"""``python -m studio generate ...``: generate images from a script, in-process on one device."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studio import pngmeta
from studio.catalog import load_catalog
from studio.errors import InvalidRequest, StudioError
from studio.schemas import parse_request

# The output file's suffix picks its format; every format keeps the generation parameters.
SUFFIX_FORMATS = {"": "png", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x768, got '{text}'") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate images to PNG (or JPEG, WebP) files")
    gen.add_argument("--model", default=None, help="model id or alias (default: the catalog's default)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--size", type=_size, default=None, help="WxH, e.g. 1024x768")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--n", type=int, default=1, help="number of images (1..4), one batched call")
    gen.add_argument("--models-dir", default=None, help="local folder of <model-id>/ pipelines")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    gen.add_argument("-o", "--output", required=True,
                     help="OUT.png (or .jpg, .webp); several images become OUT-1.png, OUT-2.png ...")
    commands.add_parser("models", help="list the catalog")
    return parser


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
    catalog = load_catalog(args.models_dir)
    width, height = args.size or (None, None)
    request = parse_request(
        dict(
            prompt=args.prompt, negative_prompt=args.negative_prompt, model=args.model, width=width, height=height,
            steps=args.steps, guidance=args.guidance, seed=args.seed, num_images=args.n,
        )
    )
    spec, request = catalog.resolve(request)

    from studio.engine import Engine  # torch only after the input is known to be good

    device = args.device or _default_device()
    result = Engine(device).run(spec, request, on_step=lambda step, total: print(f"step {step}/{total}", file=sys.stderr))
    for path, png, seed in zip(output_paths(args.output, len(result.images)), result.images, result.seeds):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pngmeta.convert(png, image_format, quality=95))
        print(f"{path}  seed={seed}")
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def list_models() -> int:
    for spec in load_catalog():
        aliases = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        d = spec.defaults
        print(f"{spec.id:<16} {spec.label}{aliases}: {spec.repo}, {d.width}x{d.height}, {d.steps} steps")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return generate(args) if args.command == "generate" else list_models()
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
