"""Image Studio: ``python app.py [--port 7860] [--devices cuda:0,cuda:1] [--api-key KEY] ...``.

Wiring only: settings -> app (backend, REST, Gradio UI) -> uvicorn. A Hugging Face Space
runs this same file and reaches it on port 7860 (the default, or ``GRADIO_SERVER_PORT``).
"""

from __future__ import annotations

import logging

from studio.config import Settings


def main(argv: list[str] | None = None) -> None:
    # Imported here, not at the top: spawned workers re-import this file as __mp_main__,
    # and they have no use for FastAPI, Gradio or uvicorn.
    import uvicorn

    from studio.server import create_app

    settings = Settings.from_args(argv)
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("studio").setLevel(logging.INFO)  # slot starts, restarts, cancels; libraries stay quiet
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
