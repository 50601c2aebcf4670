"""``python -m studio.tiny DIR [ID ...]``: build tiny offline models for tests and demos, and tiny
LoRAs for the SDXL and FLUX ones in ``DIR/loras/`` (``studio.tiny.lora``)."""

import argparse
import sys

from studio.errors import StudioError
from studio.tiny import build
from studio.tiny.lora import build_loras


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.tiny", description=__doc__)
    parser.add_argument("models_dir", help="folder to write <model-id>/ subfolders into")
    parser.add_argument("ids", nargs="*", help="model ids or aliases (default: all)")
    args = parser.parse_args(argv)
    try:
        for path in build(args.models_dir, args.ids or None):
            print(path)
        for path in build_loras(args.models_dir):
            print(path)
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
