"""The page: ``build_ui(catalog, backend, settings) -> gr.Blocks``, its layout and its wiring.

Everything is built from the catalog, so each model shows only the controls it supports. The page
has two faces on one queue: the browser UI (private events) and the Gradio API (``studio.ui.api``).
"""

from __future__ import annotations

import functools
import html
import inspect
from pathlib import Path

import gradio as gr

from studio.backend import Backend, BackendStatus
from studio.catalog import Catalog
from studio.listings import ModelListing
from studio.loras import LoraListing
from studio.config import Settings
from studio.ui.controls import FOLLOWERS
from studio.ui.handlers import Studio, model_card
from studio.ui.text import card_html, status_html
from studio.ui.wiring import Page

ASSETS_DIR = Path(__file__).resolve().parent.parent.parent / "assets"
STATUS_EVERY_S = 2.0
CACHE_CLEANUP = (3600, 6 * 3600)  # Gradio's served copies; the outputs folder keeps the originals


def mount_options(settings: Settings) -> dict:
    """Keyword arguments for ``gr.mount_gradio_app``: styling, the outputs folder it may serve, logins.

    Gradio 6 takes css/js/theme at mount time, not in ``gr.Blocks``, so the server passes these on.
    """
    return dict(
        auth=list(settings.ui_auth) or None,
        auth_message="Image Studio: sign in with a login of the server's --ui-auth." if settings.ui_auth else None,
        css_paths=[ASSETS_DIR / "studio.css"],
        js=(ASSETS_DIR / "studio.js").read_text(),
        allowed_paths=[str(Path(settings.outputs_dir).resolve())],
        favicon_path=str(ASSETS_DIR / "logo.svg"),
        show_error=True,
    )


def returning(fn, kind):
    """``fn`` with a real return annotation (this module's are strings), which ``gr.api`` shows as the type;
    the caller's ``gr.Request`` goes to ``fn`` when it takes one (what it shows depends on who asks)."""
    takes_request = "request" in inspect.signature(fn).parameters

    def call(request: gr.Request):
        return fn(request) if takes_request else fn()

    call.__name__, call.__doc__ = fn.__name__, fn.__doc__
    asked = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    call.__signature__ = inspect.Signature([asked], return_annotation=kind)
    return call


def slot_count(backend: Backend | None, settings: Settings) -> int:
    """How many jobs can run at once: the backend's slots, else the configured devices, else one."""
    try:
        slots = backend.status().slots
    except Exception:  # no backend, or one that cannot report yet: fall back to the settings
        slots = ()
    if slots:
        return len(slots)
    return max(1, len(settings.devices))


def build_ui(catalog: Catalog, backend: Backend, settings: Settings) -> gr.Blocks:
    studio = Studio(catalog, backend, settings)
    page = Page(studio, catalog.get(None))
    slots = slot_count(backend, settings)
    # Instant events: no Gradio timer or spinner over the status line and the boxes they update.
    private = dict(api_visibility="private", queue=False, show_progress="hidden")

    with gr.Blocks(title="Image Studio", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as demo:
        with gr.Row(equal_height=True, elem_id="header-row"):
            gr.HTML(
                f'<div id="studio-header">{(ASSETS_DIR / "logo.svg").read_text()}'
                '<div><div class="studio-title">Image Studio</div>'
                f'<div class="studio-tagline">{len(catalog)} text-to-image models, one prompt box.</div></div></div>',
                scale=3,
            )
            # Drawn at each page load (demo.load below): at build time the workers have not started yet.
            slot_status = gr.HTML(elem_id="slot-status", scale=2)

        # The generation controls are built from studio.ui.controls, by name; the layout only places them.
        with gr.Tabs(elem_id="studio-tabs") as tabs:
            with gr.Tab("Create", id="create"):
                with gr.Row():
                    with gr.Column(scale=5, elem_id="controls"):
                        model = page.control("model")
                        page.control("loras")
                        page.control("card")
                        prompt = page.control("prompt")
                        negative_prompt = page.control("negative_prompt")
                        # Generate and the live status together: a bar that stays on screen on a phone.
                        with gr.Column(elem_id="action-bar"):
                            with gr.Row(elem_id="generate-row"):
                                generate = gr.Button("Generate", variant="primary", elem_id="generate-button",
                                                     scale=3)
                                edit_clear = gr.Button("Clear", elem_id="edit-clear", scale=1, visible=False)
                                # Shown only while a job of this page runs (assets/studio.css: a running status line).
                                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button", scale=1)
                            job_status = gr.HTML(status_html("Ready."), elem_id="job-status")
                        with gr.Accordion("Edit an image (image-to-image, inpainting)", open=False,
                                          elem_id="edit-panel", visible=len(page.spec.tasks) > 1) as edit_panel:
                            edit_image = gr.ImageEditor(
                                label="Input image: paint over the area to repaint (no paint: the whole image)",
                                type="pil", elem_id="edit-image", height=360, sources=["upload", "clipboard"],
                                brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"), transforms=(),
                            )
                            strength = page.control("strength")
                        page.control("style")
                        size = page.control("size")
                        with gr.Row():
                            width = page.control("width")
                            height = page.control("height")
                        with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                            with gr.Row():
                                page.control("steps")
                                page.control("guidance")
                            page.control("guidance_note")
                            page.control("sampler")
                            with gr.Row(elem_id="seed-row"):
                                page.control("seed")
                                randomise = gr.Button("Random", elem_id="seed-random", scale=0, min_width=90,
                                                      size="md")
                                reuse_seed = gr.Button("♻ Reuse", elem_id="seed-reuse", scale=0, min_width=90,
                                                       size="md")
                            page.control("num_images")
                            for name in page.unplaced():  # a control the layout does not place yet
                                page.control(name)
                    with gr.Column(scale=7, elem_id="results"):
                        live_preview = gr.Image(label="Preview (while the job runs)", elem_id="live-preview",
                                                visible=False, interactive=False, height=320, format="png")
                        results = gr.Gallery(label="Results", elem_id="results-gallery", columns=2, height=560,
                                             format="png", type="filepath", interactive=False, object_fit="contain",
                                             buttons=["download", "fullscreen"])
                        params = gr.JSON(label="Parameters of the selected image", elem_id="params")
                        with gr.Row():
                            reuse = gr.Button("Reuse these settings", elem_id="reuse-button", size="sm")
                            send_to_edit = gr.Button("Send to edit", elem_id="send-to-edit", size="sm")

            with gr.Tab("Models", id="models") as models_tab:
                gr.Markdown("The studio's ranking of its models, best first. **Use** picks a model with its "
                            "recommended settings.")
                uses = {}  # model id -> its Use button; the cards are redrawn when the tab opens (downloads)
                for group, specs in catalog.grouped():
                    if not specs:
                        continue
                    gr.HTML(f'<h2 class="model-group">{html.escape(group)}</h2>')
                    with gr.Row(elem_classes="model-grid"):
                        for spec in specs:
                            with gr.Column(elem_classes="model-tile", min_width=260):
                                tile = card_html(spec, disk=studio.disk(spec), sizes=studio.sizes(spec))
                                page.add({model_card(spec.id): gr.HTML(tile)})
                                uses[spec.id] = gr.Button(f"Use {spec.label}", size="sm", elem_id=f"use-{spec.id}")

            with gr.Tab("History", id="history") as history_tab:
                with gr.Row():
                    with gr.Column(scale=7):
                        with gr.Row(elem_id="history-tools"):
                            history_filter = gr.Textbox(placeholder="Filter: words of the prompt, a model, a seed, "
                                                        "a date (2026-11-28)", show_label=False, scale=4,
                                                        elem_id="history-filter", container=False)
                            refresh = gr.Button("Refresh", size="sm", elem_id="history-refresh", scale=0,
                                                min_width=90)
                        history = gr.Gallery(label="History (newest first)", elem_id="history-gallery", columns=4,
                                             height=620, format="png", type="filepath", interactive=False,
                                             buttons=["download", "fullscreen"])
                    with gr.Column(scale=3):
                        history_params = gr.JSON(label="Parameters of the selected image")
                        with gr.Row():
                            history_reuse = gr.Button("Reuse these settings", elem_id="history-reuse", size="sm")
                            history_edit = gr.Button("Send to edit", elem_id="history-send-to-edit", size="sm")
                            history_delete = gr.Button("Delete this image", elem_id="history-delete", size="sm",
                                                       variant="stop")
                            history_undo = gr.Button("Undo delete", elem_id="history-undo", size="sm", visible=False)
                        history_status = gr.HTML(elem_id="history-status")

        # The Gradio API: one hidden input per parameter of its endpoint (studio.ui.api), in its order.
        with gr.Group(visible=False):
            api_outputs = [gr.File(label="images", file_count="multiple"), gr.JSON(label="parameters")]
            api_trigger = gr.Button(visible=False)
            api_trigger.click(studio.on_api_generate, studio.api_inputs(studio.on_api_generate), api_outputs,
                              api_name="generate", concurrency_limit=None)
            edit_trigger = gr.Button(visible=False)
            edit_trigger.click(studio.on_api_edit, studio.api_inputs(studio.on_api_edit), api_outputs,
                               api_name="edit", concurrency_limit=None)

        session_images = gr.State([])
        size_chosen = gr.State(False)  # the size boxes hold the user's size, not a model's default
        editing = gr.State(False)  # edit mode: the main button reads "Edit" and Generate repaints the input
        panel_open = gr.State(False)  # the edit panel's state: the editor's own re-uploads must not reopen an edit
        deleted = gr.State(None)  # the last image deleted in History, for Undo
        selected = gr.State(None)
        history_items = gr.State([])
        history_selected = gr.State(None)
        timer = gr.Timer(STATUS_EVERY_S)

        # ---------------------------------------------------------------- wiring
        # Each handler gets the components its parameters are named after and answers {name: update}
        # (studio.ui.wiring); the History tab's buttons run the Create tab's handlers on its own components.
        page.add(locals())
        on_history = dict(selected="history_selected", job_status="history_status", params="history_params",
                          session_images="history_items")
        edit_mode_outputs = ["editing", "generate", "edit_clear"]
        reuse_outputs = ["model", *FOLLOWERS, "prompt", "style", "seed", "num_images", "tabs", "job_status"]
        send_outputs = ["edit_image", "edit_panel", "panel_open", "width", "height", "size", "tabs",
                        *edit_mode_outputs, "job_status"]

        # A size the user typed or picked survives a model change; the last model's default does not.
        gr.on([size.input, width.input, height.input], lambda: True, None, size_chosen, **private)
        page.on(model.input, studio.on_model_change, [*FOLLOWERS, "job_status"], **private)
        page.on(size.input, studio.on_size_pick, ["width", "height"], **private)
        page.on([width.input, height.input], studio.on_size_edit, ["size"], **private)
        page.on(randomise.click, studio.on_seed_randomise, ["seed"], **private)
        page.on(reuse_seed.click, studio.on_seed_reuse, ["seed", "job_status"], **private)
        for model_id, use in uses.items():
            page.on(use.click, functools.partial(studio.on_card_use, model_id),
                    ["model", *FOLLOWERS, "tabs", "job_status"], **private)

        generation = page.on(  # also Ctrl+Enter in the prompt boxes (assets/studio.js)
            generate.click,
            studio.on_generate_click,
            ["job_status", "results", "params", "session_images", "selected", "live_preview"],
            api_visibility="private",
            # No limit here: the job goes straight to the studio's own queue, which tells its place in line
            # and expected wait (and counts it in the header); in Gradio's queue it would wait unseen.
            concurrency_limit=None,
            show_progress="hidden",  # one progress line: the status line
        )
        page.on(generation.then, studio.on_history_refresh, ["history", "history_items"], **private)
        page.on(cancel.click, studio.on_cancel_click, ["job_status", "live_preview"], cancels=[generation],
                **private)

        page.on(results.select, studio.on_gallery_select, ["params", "selected"], **private)
        page.on(history.select, studio.on_gallery_select, ["params", "selected"], names=on_history, **private)
        page.on(reuse.click, studio.on_reuse_click, reuse_outputs, **private)
        page.on(history_reuse.click, studio.on_reuse_click, reuse_outputs, names=on_history, **private)
        page.on(models_tab.select, studio.on_models_select, [model_card(spec.id) for spec in catalog], **private)
        page.on([refresh.click, history_filter.submit, history_tab.select, demo.load], studio.on_history_refresh,
                ["history", "history_items"], **private)
        page.on(history_delete.click, studio.on_history_delete,
                ["history", "history_items", "history_params", "history_selected", "deleted", "history_undo",
                 "history_status"], **private)
        page.on(history_undo.click, studio.on_history_undo,
                ["history", "history_items", "deleted", "history_undo", "history_status"], **private)
        page.on(timer.tick, studio.on_status_tick, ["slot_status"], **private)
        page.on(demo.load, studio.on_status_tick, ["slot_status"], **private)

        page.on(model.change, studio.on_model_edit_support, ["edit_panel", *edit_mode_outputs], **private)
        page.on(edit_image.upload, studio.on_edit_upload, ["width", "height", "size", *edit_mode_outputs],
                **private)
        page.on(edit_image.clear, studio.on_edit_mode, edit_mode_outputs, **private)
        page.on(edit_panel.expand, studio.on_edit_panel_expand, ["panel_open", *edit_mode_outputs], **private)
        page.on(edit_panel.collapse, studio.on_edit_panel_collapse, ["panel_open", *edit_mode_outputs], **private)
        page.on(edit_clear.click, studio.on_edit_clear, ["edit_image", *edit_mode_outputs, "job_status"], **private)
        page.on(send_to_edit.click, studio.on_send_to_edit, send_outputs, **private)
        page.on(history_edit.click, studio.on_send_to_edit, send_outputs, names=on_history, **private)
        gr.api(returning(studio.api_models, list[ModelListing]), api_name="models", queue=False)
        gr.api(returning(studio.api_status, BackendStatus), api_name="status", queue=False)
        gr.api(returning(studio.api_loras, list[LoraListing]), api_name="loras", queue=False)
        page.on(edit_image.change, studio.on_edit_change, ["strength"], **private)

    demo.queue(max_size=settings.max_queue, default_concurrency_limit=slots)
    return demo
