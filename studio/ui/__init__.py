"""The Gradio studio: ``build_ui(catalog, backend, settings) -> gr.Blocks``.

- ``layout``: the page, its layout and its wiring (``build_ui``, ``mount_options``);
- ``handlers``: ``Studio``, the handlers behind each event; ``api``: its Gradio API half;
- ``text``: the words and HTML the page shows; ``styles``: the style presets;
- ``inputs``: component values in, user errors and result parameters out.

Never imports torch: this runs in the parent process.
"""

from studio.ui.controls import RANDOM_SEED
from studio.ui.handlers import Studio
from studio.ui.layout import build_ui, mount_options
from studio.ui.styles import NO_STYLE, load_styles

__all__ = ["NO_STYLE", "RANDOM_SEED", "Studio", "build_ui", "load_styles", "mount_options"]
