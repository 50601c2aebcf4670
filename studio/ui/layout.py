"""The page: ``build_ui(catalog, backend, settings) -> gr.Blocks``, its layout and its wiring.

Everything is built from the catalog, so each model shows only the controls it supports. The page
has two faces on one queue: the browser UI (private events) and the Gradio API (``studio.ui.api``).
"""

from __future__ import annotations

import html
import inspect
from pathlib import Path

import gradio as gr

from studio.backend import Backend, BackendStatus
from studio.catalog import DEFAULT_STRENGTH, Catalog, ModelListing
from studio.config import Settings
from studio.schemas import MAX_IMAGES, MAX_SEED
from studio.ui.handlers import RANDOM_SEED, Studio, edit_mode
from studio.ui.styles import NO_STYLE
from studio.ui.text import (card_html, guidance_hint, negative_placeholder, size_choices, size_hint, size_value,
                            stars_text, status_html, steps_hint)

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
    default = catalog.get(None)
    slots = slot_count(backend, settings)
    # Instant events: no Gradio timer or spinner over the status line and the boxes they update.
    private = dict(api_visibility="private", queue=False, show_progress="hidden")
    model_choices = [(f"{spec.card.rank}. {spec.label} {stars_text(spec.card.stars)}", spec.id) for spec in catalog]
    style_choices = [(style.label, style.id) for style in studio.styles.values()]

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

        with gr.Tabs(elem_id="studio-tabs") as tabs:
            with gr.Tab("Create", id="create"):
                with gr.Row():
                    with gr.Column(scale=5, elem_id="controls"):
                        model = gr.Dropdown(model_choices, value=default.id, label="Model", elem_id="model",
                                            info="Compare them all on the Models tab.")
                        card = gr.HTML(card_html(default, compact=True), elem_id="model-card")
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                            placeholder="A lighthouse on a cliff at dusk, warm light in the windows")
                        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative-prompt",
                                              placeholder=negative_placeholder(default),
                                              visible=default.negative_prompt)
                        # Generate and the live status together: a bar that stays on screen on a phone.
                        with gr.Column(elem_id="action-bar"):
                            with gr.Row(elem_id="generate-row"):
                                generate = gr.Button("Generate", variant="primary", elem_id="generate-button",
                                                     scale=3)
                                edit_clear = gr.Button("Clear", elem_id="edit-clear", scale=1, visible=False)
                                # Shown only while a job of this page runs (assets/studio.css: a running status line).
                                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button", scale=1)
                            job_status = gr.HTML(status_html("Ready."), elem_id="job-status")
                        able = ", ".join(spec.label for spec in catalog if len(spec.tasks) > 1)
                        with gr.Accordion("Edit an image (image-to-image, inpainting)", open=False,
                                          elem_id="edit-panel", visible=len(default.tasks) > 1) as edit_panel:
                            edit_image = gr.ImageEditor(
                                label="Input image: paint over the area to repaint (no paint: the whole image)",
                                type="pil", elem_id="edit-image", height=360, sources=["upload", "clipboard"],
                                brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"), transforms=(),
                            )
                            strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH["image-to-image"], step=0.05,
                                                 label="Strength",
                                                 elem_id="strength",
                                                 info=f"How much is repainted: low keeps the input. Models: {able}")
                        style = gr.Dropdown(style_choices, value=NO_STYLE, label="Style", elem_id="style")
                        size = gr.Radio(size_choices(default), value=size_value(default, default.defaults.width,
                                                                                 default.defaults.height),
                                        label="Size", elem_id="size-presets")
                        with gr.Row():
                            # precision None: a typed 200.5 reaches the validation instead of being rounded.
                            width = gr.Number(default.defaults.width, label="Width", elem_id="width",
                                              info=size_hint(default), interactive=not default.limits.allowed_sizes)
                            height = gr.Number(default.defaults.height, label="Height", elem_id="height",
                                               interactive=not default.limits.allowed_sizes)
                        with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                            # Number boxes, not sliders: a slider silently clamps a typed 400 to its top;
                            # a box passes it on to the one validation, which says the model's range.
                            with gr.Row():
                                steps = gr.Number(default.defaults.steps, label="Steps",
                                                  elem_id="steps", info=steps_hint(default), min_width=140)
                                fixed = default.limits.min_guidance == default.limits.max_guidance
                                guidance = gr.Number(default.defaults.guidance, label="Guidance", step=0.1,
                                                     elem_id="guidance", info=guidance_hint(default),
                                                     visible=default.cfg and not fixed, min_width=140)
                            guidance_note = gr.Markdown(studio.model_controls(default)[-1]["value"],
                                                        visible=not default.cfg or fixed)
                            with gr.Row(elem_id="seed-row"):
                                seed = gr.Number(RANDOM_SEED, label="Seed", elem_id="seed", scale=4,
                                                 info=f"{RANDOM_SEED}: a new seed each run; 0..{MAX_SEED} repeats one")
                                randomise = gr.Button("Random", elem_id="seed-random", scale=0, min_width=90,
                                                      size="md")
                                reuse_seed = gr.Button("♻ Reuse", elem_id="seed-reuse", scale=0, min_width=90,
                                                       size="md")
                            num_images = gr.Number(1, label="Images", elem_id="num-images",
                                                   info=f"1..{MAX_IMAGES} in one batch")
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
                model_cards = []  # in catalog order, redrawn when the tab opens: the Weights row follows downloads
                for group, specs in catalog.grouped():
                    if not specs:
                        continue
                    gr.HTML(f'<h2 class="model-group">{html.escape(group)}</h2>')
                    with gr.Row(elem_classes="model-grid"):
                        for spec in specs:
                            with gr.Column(elem_classes="model-tile", min_width=260):
                                model_cards.append(gr.HTML(card_html(spec, disk=studio.disk(spec), sizes=studio.sizes(spec))))
                                use = gr.Button(f"Use {spec.label}", size="sm", elem_id=f"use-{spec.id}")
                                use.click(studio.on_card_use, gr.State(spec.id),
                                          [model, card, negative, size, width, height, steps, guidance,
                                           guidance_note, tabs, job_status], **private)

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

        # The Gradio API: inputs default to None so each model's defaults apply (the UI always sends values).
        with gr.Group(visible=False):
            api_inputs = [
                gr.Textbox(label="prompt"),
                gr.Dropdown([spec.id for spec in catalog], label=f"model (none: the default, {default.id})",
                            value=None, allow_custom_value=True),  # aliases too
                gr.Textbox(label="negative_prompt", value=None),
                gr.Number(label="width", value=None, precision=0),
                gr.Number(label="height", value=None, precision=0),
                gr.Number(label="steps", value=None, precision=0),
                gr.Number(label="guidance", value=None),
                gr.Number(label="seed", value=None, precision=0),
                gr.Number(label="num_images", value=1, precision=0),
                gr.Dropdown([style.id for style in studio.styles.values()], label="style", value=NO_STYLE),
                gr.JSON(label="loras", value=None),  # [{"name", "scale"}] or "NAME:SCALE, ..."
            ]
            api_outputs = [gr.File(label="images", file_count="multiple"), gr.JSON(label="parameters")]
            api_trigger = gr.Button(visible=False)
            edit_api_inputs = [
                gr.Image(label="image", type="filepath"),
                api_inputs[0],
                gr.Image(label="mask", type="filepath", value=None),
                api_inputs[1],
                gr.Number(label="strength", value=None),
                *api_inputs[2:],
            ]
            edit_trigger = gr.Button(visible=False)

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
        model_outputs = [card, negative, size, width, height, steps, guidance, guidance_note]
        generate_inputs = [prompt, model, negative, width, height, steps, guidance, seed, num_images, style]

        studio.box_labels = {name: box.label for name, box in dict(
            prompt=prompt, negative_prompt=negative, width=width, height=height, steps=steps, guidance=guidance,
            seed=seed, num_images=num_images, strength=strength, style=style, model=model).items()}
        # A size the user typed or picked survives a model change; the last model's default does not.
        gr.on([size.input, width.input, height.input], lambda: True, None, size_chosen, **private)
        model.input(studio.on_model_change, [model, width, height, size_chosen], [*model_outputs, job_status],
                    **private)
        size.input(studio.on_size_pick, size, [width, height], **private)
        width.input(studio.on_size_edit, [model, width, height], size, **private)
        height.input(studio.on_size_edit, [model, width, height], size, **private)
        randomise.click(studio.on_seed_randomise, None, seed, **private)
        reuse_seed.click(studio.on_seed_reuse, selected, [seed, job_status], **private)

        generation = generate.click(  # also Ctrl+Enter in the prompt boxes (assets/studio.js)
            studio.on_generate_click,
            [*generate_inputs, edit_image, strength, editing, session_images],
            [job_status, results, params, session_images, selected, live_preview],
            api_visibility="private",
            # No limit here: the job goes straight to the studio's own queue, which tells its place in line
            # and expected wait (and counts it in the header); in Gradio's queue it would wait unseen.
            concurrency_limit=None,
            show_progress="hidden",  # one progress line: the status line
        )
        generation.then(studio.on_history_refresh, history_filter, [history, history_items], **private)
        cancel.click(studio.on_cancel_click, None, [job_status, live_preview], cancels=[generation], **private)

        results.select(studio.on_gallery_select, session_images, [params, selected], **private)
        history.select(studio.on_gallery_select, history_items, [history_params, history_selected], **private)
        reuse_outputs = [model, *model_outputs, prompt, style, seed, num_images, tabs]
        reuse.click(studio.on_reuse_click, selected, [*reuse_outputs, job_status], **private)
        history_reuse.click(studio.on_reuse_click, history_selected, [*reuse_outputs, history_status], **private)
        models_tab.select(studio.on_models_select, None, model_cards, **private)
        gr.on([refresh.click, history_filter.submit, history_tab.select, demo.load], studio.on_history_refresh,
              history_filter, [history, history_items], **private)
        history_delete.click(studio.on_history_delete, [history_selected, history_filter],
                             [history, history_items, history_params, history_selected, deleted, history_undo,
                              history_status], **private)
        history_undo.click(studio.on_history_undo, [deleted, history_filter],
                           [history, history_items, deleted, history_undo, history_status], **private)
        timer.tick(studio.on_status_tick, None, slot_status, **private)
        demo.load(studio.on_status_tick, None, slot_status, **private)

        api_trigger.click(
            studio.on_api_generate, api_inputs, api_outputs, api_name="generate", concurrency_limit=None,
        )
        edit_trigger.click(
            studio.on_api_edit, edit_api_inputs, api_outputs, api_name="edit", concurrency_limit=None,
        )
        mode = [editing, generate, edit_clear]  # edit mode: its state, the main button, Clear beside it
        model.change(studio.on_model_edit_support, [model, edit_image, editing], [edit_panel, *mode], **private)
        edit_image.upload(studio.on_edit_upload, [model, edit_image, panel_open], [width, height, size, *mode],
                          **private)
        edit_image.clear(studio.on_edit_mode, edit_image, mode, **private)
        edit_panel.expand(lambda value: (True, *studio.on_edit_mode(value)), edit_image, [panel_open, *mode],
                          **private)
        edit_panel.collapse(lambda: (False, *edit_mode(False)), None, [panel_open, *mode], **private)
        edit_clear.click(studio.on_edit_clear, None, [edit_image, *mode, job_status], **private)
        edit_outputs = [edit_image, edit_panel, panel_open, width, height, size, tabs, *mode]
        send_to_edit.click(studio.on_send_to_edit, [model, selected], [*edit_outputs, job_status], **private)
        history_edit.click(studio.on_send_to_edit, [model, history_selected], [*edit_outputs, history_status],
                           **private)
        gr.api(returning(studio.api_models, list[ModelListing]), api_name="models", queue=False)
        gr.api(returning(studio.api_status, BackendStatus), api_name="status", queue=False)
        edit_image.change(studio.on_edit_change, [edit_image, strength], strength, **private)

    demo.queue(max_size=settings.max_queue, default_concurrency_limit=slots)
    return demo
