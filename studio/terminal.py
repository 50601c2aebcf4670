"""What the server's terminal shows: our log lines, a start-up banner, and quiet libraries.

- ``setup_logging()`` (the server process): our loggers at INFO in uvicorn's format, and uvicorn's
  access log without the web page's own traffic (the page itself, its assets, queue, heartbeats and
  the status poll of every open tab), which would otherwise be nearly all of it. Failed requests
  always show.
- ``quiet_libraries()`` (every process that loads pipelines: workers, the CLI): diffusers' and
  transformers' warnings and "Loading ..." bars off through their own settings, and their
  deprecation warnings filtered by module. Our own loggers and errors are untouched.
- ``banner(...)``: what the server prints once it is ready: where to open it, its devices, its models.

Torch-free: the server process imports it.
"""

from __future__ import annotations

import logging
import warnings

from studio.catalog import Catalog
from studio.owners import AccessLogOwner

LOG_FORMAT = "%(levelname)s:     %(name)s: %(message)s"  # uvicorn's own layout, with the logger's name

# The web page's machinery, served by the mounted Gradio app: a page load fetches ~100 assets, and
# every open tab polls the slot status every few seconds. The REST API, /health, /metrics and /docs
# stay in the access log.
UI_TRAFFIC = ("/assets/", "/static/", "/gradio_api/", "/theme.css", "/favicon.ico", "/config", "/manifest.json")
UI_PAGE = "/"  # the page itself: a line for every reload of every tab says nothing a user needs

# Deprecation notices the libraries raise about their own internals (e.g. diffusers' FluxPosEmbed
# in Chroma's transformer); there is nothing a user of the studio can do about them.
LIBRARY_MODULES = r"(diffusers|transformers|huggingface_hub)(\.|$)"


class QuietUiTraffic(logging.Filter):
    """Drops uvicorn access lines of the web page's own successful requests (``UI_TRAFFIC``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            _client, _method, path, _version, status = record.args
        except (TypeError, ValueError):  # not an access line as uvicorn writes them: keep it
            return True
        path = str(path)
        page = path.split("?", 1)[0] == UI_PAGE
        return int(status) >= 400 or not (page or path.startswith(UI_TRAFFIC))


def setup_logging() -> None:
    """The server's logging: call after uvicorn has configured its loggers (``uvicorn.Config``)."""
    logging.basicConfig(format=LOG_FORMAT)
    logging.getLogger("studio").setLevel(logging.INFO)  # slot starts, restarts, refusals; libraries stay quiet
    logging.getLogger("uvicorn.access").addFilter(QuietUiTraffic())
    logging.getLogger("uvicorn.access").addFilter(AccessLogOwner())  # who sent it: a key's name, a login


def quiet_libraries() -> None:
    """Silence the libraries' chatter in a process that loads pipelines; call before loading any.

    The hub's download bars stay on: a first download is minutes of real progress.
    """
    import diffusers
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    hub_bars = not are_progress_bars_disabled()
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()  # "Loading pipeline components", "Loading weights"
    if hub_bars:
        enable_progress_bars()  # transformers' disable_progress_bar() switched the hub's off too
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARY_MODULES)
    if not logging.getLogger().handlers:  # our own warnings in a worker: the server's format
        logging.basicConfig(format=LOG_FORMAT)


def local_url(host: str, port: int) -> str:
    """The address to open on this machine: ``localhost`` when the server listens on every interface."""
    shown = "localhost" if host in ("", "0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def memory_line(plan: str, gpu_memory_gb: float | None) -> str:
    """The banner's memory plan: ``auto (the first plan that fits each model and device), at most 24 GiB a GPU``."""
    text = "auto (the first plan that fits each model and device)" if plan == "auto" else f"{plan} for every model"
    return text + (f", at most {gpu_memory_gb:g} GiB a GPU" if gpu_memory_gb else "")


def banner(url: str, devices: list[str], catalog: Catalog, on_disk: list[str], memory: str | None = None) -> str:
    """The lines printed once the server is ready: where to open it, its devices, its models."""
    others = len(catalog) - len(on_disk)
    if not on_disk:
        models = "none yet: each downloads from the Hugging Face hub when first used (or `python -m studio pull ID`)"
    elif others:
        models = f"{', '.join(on_disk)}; the other {others} download from the Hugging Face hub when first used"
    else:
        models = f"all {len(catalog)}"
    return "\n".join([
        f"Image Studio is ready: {url}/  (Ctrl+C stops it)",
        f"  web UI, Gradio API   {url}/",
        f"  REST API, its docs   {url}/v1/images/generations, {url}/docs",
        f"  devices              {', '.join(devices) or 'none'}",
        f"  models on disk       {models}",
    ] + ([f"  memory plan          {memory}"] if memory else []))
