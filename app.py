"""Image Studio: ``python app.py [--port 7860] [--devices cuda:0,cuda:1] [--api-key KEY] ...``.

Wiring only: settings -> app (backend, REST, Gradio UI) -> uvicorn, and a banner once it is ready.
A Hugging Face Space runs this same file and reaches it on port 7860 (the default, or
``GRADIO_SERVER_PORT``).
"""

from __future__ import annotations

import signal

from studio.config import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv)  # first: a bad flag exits 2 at once, before the slow imports

    # Imported here, not at the top: spawned workers re-import this file as __mp_main__,
    # and they have no use for FastAPI, Gradio or uvicorn.
    import uvicorn

    from studio import terminal
    from studio.server import create_app, end_session_streams

    app = create_app(settings)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)  # the app's lifespan: every worker is ready after this
            if self.started:
                slots = app.state.backend.status().slots
                devices = [f"{slot.device} ({slot.model}, {slot.plan} plan)" if slot.model else slot.device
                           for slot in slots]
                url = terminal.local_url(settings.host, settings.port)
                on_disk = app.state.backend.models_on_disk()  # the download phase's survey (studio.downloads)
                memory = terminal.memory_line(settings.memory_plan, settings.gpu_memory_gb)
                print(terminal.banner(url, devices, app.state.catalog, on_disk, memory), flush=True)

        async def shutdown(self, sockets=None) -> None:
            end_session_streams(app)  # else every open browser tab holds the stop for the whole grace period
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=10)
    terminal.setup_logging()  # after uvicorn.Config, which sets up uvicorn's loggers
    # After its graceful shutdown uvicorn raises the signal that stopped it again, to the handler it found:
    # SIGTERM (a service manager, `docker stop`) then ends the stop as Ctrl+C does, with exit 0.
    signal.signal(signal.SIGTERM, stopped)
    try:
        Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled; a clean stop (as uvicorn.run does)
        pass


def stopped(signum, frame) -> None:
    """The end of a stop by SIGTERM, once the server has shut down: a clean exit, not death by the signal."""
    raise SystemExit(0)


if __name__ == "__main__":
    main()
