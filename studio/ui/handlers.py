"""The ``Studio`` handlers behind every event of the page (``on_<thing>_<event>``): plain functions of
component values that return component updates, bound to one catalog, backend and outputs folder.
"""

from __future__ import annotations

import html
import random
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from studio import editor, pngmeta
from studio.backend import Backend
from studio.catalog import DEFAULT_STRENGTH, Catalog, ModelSpec
from studio.config import Settings
from studio.errors import InvalidRequest, JobCancelled, StudioError
from studio.history import History, owner_dir
from studio.jobs import ANONYMOUS
from studio.owners import address_owner
from studio.schemas import MAX_SEED, GenerationRequest, Progress, parse_size
from studio.ui.api import ApiHandlers
from studio.ui.inputs import as_float, as_int, int_or_none, path_of, refused, result_params, user_error
from studio.ui.styles import NO_STYLE, Style, load_styles
from studio.ui.text import (card_html, describe, guidance_hint, negative_placeholder, size_choices, size_hint,
                            size_value, slots_html, status_html, steps_hint)

RANDOM_SEED = -1  # the UI's "draw a new seed each run"
SESSION_RESULTS = 24  # images kept in a browser session's results gallery
HISTORY_SHOWN = 60
UI_PREVIEWS = 4  # live previews of a job in the Create tab
EMPTY_PROMPT = "Type a prompt first: the grey text in the box is only an example."


class Studio(ApiHandlers):
    """The handlers behind every event of the page, bound to one catalog, backend and outputs folder."""

    def __init__(self, catalog: Catalog, backend: Backend | None, settings: Settings, styles: dict[str, Style] | None = None):
        self.catalog = catalog
        self.backend = backend
        self.settings = settings
        self.styles = styles or load_styles()
        self.prune(History(settings.outputs_dir, everything=True))
        self._jobs: dict[str, set] = {}  # browser session -> its running jobs, for the Cancel button
        self.box_labels: dict[str, str] = {}

    def ui_message(self, exc: StudioError) -> str:
        """An error as the page says it: the box's own name where it differs from the field's
        ("num_images" is the box "Images") and plain words for a bound."""
        message = exc.message
        for wording, plain in PLAIN_BOUNDS.items():
            message = message.replace(wording, plain)
        label, prefix = self.box_labels.get(exc.field or ""), f"{exc.field}:"
        if label and label.lower() != exc.field and message.startswith(prefix):
            message = f"{label}:{message[len(prefix):]}"
        return message

    def owner(self, request: gr.Request | None) -> str | None:
        """The login behind a request when the UI has logins, else None (one shared outputs folder)."""
        if not self.settings.ui_auth or request is None:
            return None
        return getattr(request, "username", None)

    def job_owner(self, request: gr.Request | None) -> str:
        """Whose job a request submits (``studio.owners``): its login, else its client's address."""
        return self.owner(request) or address_owner(getattr(request, "client", None) if request else None)

    def saved_history(self, request: gr.Request | None) -> History:
        """Where this request's images go: its login's folder (``history.owner_dir``)."""
        return History(owner_dir(self.settings.outputs_dir, self.owner(request)), limit=HISTORY_SHOWN)

    def shown_history(self, request: gr.Request | None) -> History:
        """What the History tab shows this request: its own images; an admin's (``--ui-admin``) every folder's."""
        if self.owner(request) is not None and self.owner(request) in self.settings.ui_admins:
            return History(self.settings.outputs_dir, limit=HISTORY_SHOWN, everything=True)
        return self.saved_history(request)

    def prune(self, history: History) -> None:
        """Apply ``--keep-days`` / ``--keep-images`` to a history's folders (off by default)."""
        history.prune(self.settings.keep_days or None, self.settings.keep_images or None)

    def style(self, style_id: str | None) -> Style:
        key = (style_id or NO_STYLE).strip().lower()
        if key not in self.styles:
            known = ", ".join(self.styles)
            raise InvalidRequest(f"style: unknown style '{style_id}'; available: {known}", field="style")
        return self.styles[key]

    def resolve(self, prompt, model, negative_prompt, width, height, steps, guidance, seed, num_images, style,
                image: bytes | None = None, mask: bytes | None = None, strength=None, previews: int = 0, loras=None):
        """Validate the inputs once (pydantic limits, then the model's own) into a resolved request.
        An input ``image`` (and ``mask``) makes it an edit (image-to-image, inpainting)."""
        spec = self.catalog.get(model)
        seed = as_int(seed, "seed")
        text, negative = (prompt or "").strip(), (negative_prompt or "").strip()
        if text:  # an empty prompt stays empty, styled or not, so validation names it
            text, negative = self.style(style).apply(text, negative, spec.negative_prompt)
        return self.catalog.parse(
            dict(
                prompt=text,
                negative_prompt=negative or None,
                model=spec.id,
                width=as_int(width, "width"),
                height=as_int(height, "height"),
                steps=as_int(steps, "steps"),
                guidance=as_float(guidance),
                seed=None if seed == RANDOM_SEED else seed,
                num_images=as_int(num_images, "num_images") or 1,
                image=image,
                mask=mask if image is not None else None,
                strength=as_float(strength) if image is not None else None,
                previews=previews,
                loras=loras,
            )
        )

    async def run(self, spec: ModelSpec, request: GenerationRequest, session: str | None, history: History,
                  owner: str = ANONYMOUS):
        """Submit and follow ``owner``'s job: yields ``Progress`` events, then ``(files, result)`` saved in ``history``.

        Leaving early (Gradio cancelled the event, the browser went away) cancels the job in its worker.
        """
        job = self.backend.submit(spec, request, owner)
        self._jobs.setdefault(session, set()).add(job)
        try:
            async for event in job.events():
                yield event
            result = await job.result()
        finally:
            running = self._jobs.get(session, set())
            running.discard(job)
            if not running:
                self._jobs.pop(session, None)
            if not job.done():
                job.cancel()
        files = [history.save(png, pngmeta.metadata(request, seed))
                 for png, seed in zip(result.images, request.seeds)]
        self.prune(history)
        yield files, result

    async def on_generate_click(
        self, prompt, model, negative_prompt, width, height, steps, guidance, seed, num_images, style,
        edit_value, strength, editing, session_images, request: gr.Request,
    ):
        """The Generate (or, in edit mode, Edit) button: live status while it runs, then the images and
        their parameters.

        Every error stays in the status line alone (no toast, no "Error" label on the last good image),
        worded with the boxes' own names, and the newest image ends selected with its parameters beside it.
        """
        keep = gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()  # the outputs that change later
        try:
            spec = self.catalog.get(model)
            if not spec.negative_prompt:
                negative_prompt = ""  # the box is hidden for this model; a leftover value must not fail the job
            check_seed_box(seed)
            # Only in edit mode, and only for models that can edit: a leftover image must not make an edit.
            editing = bool(editing) and len(spec.tasks) > 1
            image, mask = editor.edit_files(edit_value) if editing else (None, None)
            if image is not None and as_int(steps, "steps") == spec.defaults.steps:
                steps = None  # the default steps, raised for an edit where strength x steps is under one step
            if not (prompt or "").strip() and image is None:
                # The box's placeholder reads like a prompt: say so once, in the status line, no toast.
                yield status_html(EMPTY_PROMPT, error=True), *keep
                return
            spec, resolved = self.resolve(
                prompt, model, negative_prompt, width, height, steps, guidance, seed, num_images, style,
                image=image, mask=mask, strength=strength, previews=UI_PREVIEWS,
            )
        except StudioError as exc:
            refused(exc.message, exc.status)
            yield status_html(self.ui_message(exc), error=True), *keep
            return
        session_images = list(session_images or [])
        edit = resolved.task != "text-to-image"
        yield status_html("Starting the edit" if edit else "Starting", 0.0, running=True), *keep
        try:
            session = request.session_hash if request else None
            async for item in self.run(spec, resolved, session, self.saved_history(request), self.job_owner(request)):
                if isinstance(item, Progress):
                    preview = editor.preview_image(item)
                    if preview is not None:
                        yield gr.skip(), *keep[1:], gr.Image(preview, visible=True)
                        continue
                    text, fraction = describe(item, spec, editing=edit)
                    yield status_html(text, fraction, running=True), *keep
                else:
                    files, result = item
        except JobCancelled:
            yield status_html("Cancelled."), *keep[:-1], gr.Image(None, visible=False)
            return
        except StudioError as exc:
            refused(exc.message, exc.status)
            yield status_html(self.ui_message(exc), error=True), *keep[:-1], gr.Image(None, visible=False)
            return
        params = result_params(resolved, result, style or NO_STYLE, files)
        fresh = [(str(path), self._caption(resolved, seed)) for path, seed in zip(files, resolved.seeds)]
        session_images = (fresh + session_images)[:SESSION_RESULTS]
        count = len(files)
        done = (f"Done: {count} image{'s' if count > 1 else ''}{' edited' if edit else ''} in {result.duration_s:.1f} s"
                f" · seed{'s' if count > 1 else ''} {', '.join(map(str, resolved.seeds))}"
                + (f" · slot {result.slot}" if result.slot is not None else ""))
        newest = gr.Gallery(value=session_images, selected_index=0)
        yield status_html(done, 1.0), newest, params, session_images, str(files[0]), gr.Image(None, visible=False)

    def on_model_edit_support(self, model_id: str, edit_value, editing: bool):
        """The edit panel shows for models that can edit; edit mode holds only for them."""
        able = len(self.catalog.get(model_id).tasks) > 1
        return gr.Accordion(visible=able), *self.on_edit_mode(edit_value, opened=able and bool(editing))

    def on_edit_upload(self, model_id: str, edit_value, panel_open: bool):
        """A new input image sets the size to its own, fitted to the model's rules, and turns edit mode on
        while the panel is open (the editor also re-uploads its layers by itself, after a collapse too)."""
        background = edit_value.get("background") if isinstance(edit_value, dict) else None
        if background is None:
            return gr.skip(), gr.skip(), gr.skip(), *edit_mode(False)
        spec = self.catalog.get(model_id)
        width, height = spec.fit_size(*background.size)
        return width, height, size_value(spec, width, height), *edit_mode(bool(panel_open))

    def on_edit_change(self, edit_value, strength):
        """Strength follows the task's default (``catalog.DEFAULT_STRENGTH``) as painting turns an
        image-to-image into an inpainting and back, unless the user moved it to a value of their own."""
        task = editor.edit_task(edit_value)
        if task is None or strength not in DEFAULT_STRENGTH.values():
            return gr.skip()
        return DEFAULT_STRENGTH[task]

    def on_send_to_edit(self, model_id: str, path: str | None):
        """Put the selected image into the edit panel of the Create tab, its size fitted to the model, and
        turn edit mode on. With nothing selected: only a message (the last output, the tab's status line)."""
        unchanged = (gr.skip(),) * 10
        if not path:
            return *unchanged, nothing_selected()
        try:
            with Image.open(path) as image:
                image.load()
                background = image.convert("RGB")
        except OSError:
            return *unchanged, status_html("That image is no longer in the outputs folder.", error=True)
        spec = self.catalog.get(model_id)
        if len(spec.tasks) < 2:
            able = ", ".join(s.label for s in self.catalog if len(s.tasks) > 1)
            return *unchanged, status_html(f"{spec.label} cannot edit images; models that can: {able}.", error=True)
        width, height = spec.fit_size(*background.size)
        value = {"background": background, "layers": [], "composite": background}
        return (value, gr.Accordion(open=True), True, width, height, size_value(spec, width, height),
                gr.Tabs(selected="create"), *edit_mode(True),
                status_html("Edit mode: Edit repaints this image (Clear or collapsing the panel turns it off)."))

    def on_edit_mode(self, edit_value, opened: bool = True):
        """The panel opened or closed, or its image changed: edit mode is on while it is open and holds an image."""
        has_image = isinstance(edit_value, dict) and edit_value.get("background") is not None
        return edit_mode(opened and has_image)

    def on_edit_clear(self):
        """The Clear button beside Edit: no input image, edit mode off."""
        return None, *edit_mode(False), status_html("Edit mode off: Generate makes a new image.")

    async def on_cancel_click(self, request: gr.Request):
        """Stop this browser's jobs in their workers (queued ones leave the queue at once).

        Async, so it runs on the event loop with the generate handlers that fill ``_jobs``. It also hides
        the live preview: Gradio cancels the generate handler, which then never gets to."""
        jobs = list(self._jobs.get(request.session_hash if request else None, ()))
        for job in jobs:
            job.cancel()
        return status_html("Cancelled." if jobs else "Nothing to cancel."), gr.Image(None, visible=False)

    def model_controls(self, spec: ModelSpec, values: dict | None = None) -> tuple:
        """Updates for every control that depends on the model, with its defaults or ``values``."""
        values = values or {}
        d, lim = spec.defaults, spec.limits
        width, height = values.get("width", d.width), values.get("height", d.height)
        guidance = values.get("guidance", d.guidance)
        fixed = lim.min_guidance == lim.max_guidance
        return (
            card_html(spec, compact=True),
            gr.update(visible=spec.negative_prompt, placeholder=negative_placeholder(spec),
                      **({"value": values.get("negative_prompt") or ""} if "negative_prompt" in values else {})),
            gr.update(choices=size_choices(spec), value=size_value(spec, width, height)),
            gr.update(value=width, interactive=not lim.allowed_sizes, info=size_hint(spec)),
            gr.update(value=height, interactive=not lim.allowed_sizes),
            gr.update(value=values.get("steps", d.steps), info=steps_hint(spec)),
            gr.update(value=guidance, info=guidance_hint(spec), visible=spec.cfg and not fixed),
            gr.update(visible=not spec.cfg or fixed,
                      value=f"Guidance is fixed at **{lim.min_guidance:g}** for {spec.label} (guidance-distilled)."),
        )

    def on_model_change(self, model_id: str, width=None, height=None, chosen: bool = False) -> tuple:
        """The new model's controls. A size the user ``chosen`` (typed or picked, not the last model's
        default) is kept where the model takes it; otherwise the nearest size it takes, said in the status
        line (the last output)."""
        spec = self.catalog.get(model_id)
        typed = int_or_none(width), int_or_none(height)
        if not chosen or None in typed:
            return *self.model_controls(spec), gr.skip()
        if not accepts_size(spec, *typed):
            kept = spec.fit_size(*typed)
            note = (f"Size: {typed[0]}×{typed[1]} does not suit {spec.label} ({size_hint(spec).rstrip('.')}); "
                    f"now {kept[0]}×{kept[1]}.")
            return *self.model_controls(spec, dict(width=kept[0], height=kept[1])), status_html(note)
        return *self.model_controls(spec, dict(width=typed[0], height=typed[1])), gr.skip()

    def on_card_use(self, model_id: str) -> tuple:
        """A "Use" button on the Models tab: pick the model with its recommended settings, go to the studio
        and say what it set (steps and guidance sit in the collapsed Advanced panel)."""
        spec = self.catalog.get(model_id)
        use = spec.recommended()
        d = spec.defaults
        set_ = f"steps {use['steps']}" + (f", guidance {use['guidance']:g}" if spec.cfg else "")
        note = (f"Using {spec.label}: {set_}, size {d.width}×{d.height} (steps and guidance are in "
                f"Advanced settings).")
        return (spec.id, *self.model_controls(spec, use), gr.Tabs(selected="create"), status_html(note))

    def on_size_pick(self, size: str | None):
        if not size:
            return gr.skip(), gr.skip()
        return parse_size(size)

    def on_size_edit(self, model_id: str, width, height):
        return size_value(self.catalog.get(model_id), int_or_none(width), int_or_none(height))

    def on_seed_randomise(self) -> int:
        """A concrete new seed in the box, so the next run can be repeated exactly."""
        return random.randint(0, MAX_SEED)

    def on_seed_reuse(self, path: str | None):
        """The seed of the selected result (the newest after each run) back in the box; else a message."""
        seed = None
        if path:
            try:
                seed = pngmeta.read(path).get("seed")
            except OSError:
                pass
        if seed is None:
            return gr.skip(), nothing_selected("No image yet: generate one, or select one in the results, "
                                               "to reuse its seed.")
        return int(seed), status_html(f"Seed {seed} is in the Seed box.")

    def on_gallery_select(self, images: list, evt: gr.SelectData):
        """Show the parameters stored in the selected image's PNG; remember its path for "reuse"."""
        if not images or evt.index is None or evt.index >= len(images):
            return {}, None
        path = path_of(images[evt.index])
        try:
            params = pngmeta.read(path)
        except OSError:
            params = {}
        params.pop(pngmeta.A1111_KEY, None)
        return params, path

    def on_history_refresh(self, query: str | None, request: gr.Request):
        """This login's images, newest first, those matching the filter words; their count in the label."""
        history = self.shown_history(request)
        entries = history.entries(query=query or "")
        items = [(str(entry.path), entry.caption) for entry in entries]
        label = f"History: {len(items)} image{'' if len(items) == 1 else 's'}" + (
            f" matching “{query.strip()}”" if (query or "").strip() else "") + " (newest first)"
        return gr.Gallery(value=items, label=label, selected_index=None), items

    def on_history_delete(self, path: str | None, query: str | None, request: gr.Request):
        """Delete the selected image's file (only that one), show the history without it, and keep its bytes
        for Undo. Outputs: gallery, items, parameters, selection, the deleted file, Undo, the message."""
        unchanged = (gr.skip(),) * 6
        if not path:
            return *unchanged, nothing_selected("Select an image in the history first.")
        history = self.shown_history(request)
        if not history.holds(path):
            return *unchanged, status_html("That image is not in your history.", error=True)
        try:
            png = Path(path).read_bytes()  # kept for Undo
            history.delete(path)
        except OSError:
            return *unchanged, status_html("That image is no longer in the outputs folder.", error=True)
        gallery, items = self.on_history_refresh(query, request)
        message = f"Deleted {Path(path).name}. Undo brings it back."
        return gallery, items, {}, None, {"path": path, "png": png}, gr.Button(visible=True), status_html(message)

    def on_history_undo(self, deleted: dict | None, query: str | None, request: gr.Request):
        """Put the last deleted image back where it was. Outputs: gallery, items, the deleted file, Undo, message."""
        if not deleted:
            return gr.skip(), gr.skip(), None, gr.Button(visible=False), status_html("Nothing to undo.")
        path = Path(deleted["path"])
        if not self.shown_history(request).holds(path):
            return gr.skip(), gr.skip(), None, gr.Button(visible=False), status_html("That image is not in your history.", error=True)
        path.write_bytes(deleted["png"])
        gallery, items = self.on_history_refresh(query, request)
        return gallery, items, None, gr.Button(visible=False), status_html(f"Restored {path.name}.")

    def on_reuse_click(self, path: str | None):
        """Fill every control from the selected image's metadata, ready to generate it again; the last
        output is the message of the tab the button is on. With nothing selected only the message changes."""
        unchanged = (gr.skip(),) * 14
        if not path:
            return *unchanged, nothing_selected()
        try:
            params = pngmeta.read(path)
        except OSError:
            return *unchanged, status_html("That image is no longer in the outputs folder.", error=True)
        if not params.get("model") or not params.get("prompt"):
            return *unchanged, status_html("That image has no Image Studio parameters to reuse.", error=True)
        try:
            spec = self.catalog.get(params["model"])
        except StudioError as exc:
            return *unchanged, status_html(exc.message, error=True)
        seed = params.get("seed")
        return (
            spec.id,
            *self.model_controls(spec, params),
            params["prompt"],
            NO_STYLE,  # the stored prompt already has the style in it
            seed if seed is not None else RANDOM_SEED,
            1,
            gr.Tabs(selected="create"),
            status_html(f"Reused the settings of {Path(path).name}: Generate makes it again."),
        )

    def on_status_tick(self) -> str:
        try:
            status = self.backend.status()
        except Exception as exc:  # status is a nicety; never break the page over it
            return f'<span title="{html.escape(str(exc))}">status unavailable</span>'
        return slots_html(status)

    def on_models_select(self) -> list[str]:
        """The Models tab's cards, redrawn with what is on disk now (in the order the tab lists them)."""
        return [card_html(spec, disk=self.disk(spec), sizes=self.sizes(spec))
                for _, specs in self.catalog.grouped() for spec in specs]

    def disk(self, spec: ModelSpec) -> dict:
        """``{"on_disk", "download_bytes"}`` from the download phase in front of the backend, if there is one."""
        status = getattr(self.backend, "disk_status", None)
        return status(spec.id) if status else {}

    def sizes(self, spec: ModelSpec):
        """The model's component sizes from its files, where the download phase knows them (else None)."""
        sizes = getattr(self.backend, "weights", None)
        return sizes(spec.id) if sizes else None

    def _resolve_or_error(self, *values, **edit):
        try:
            return self.resolve(*values, **edit)
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None

    @staticmethod
    def _caption(request: GenerationRequest, seed: int) -> str:
        return f"{request.model} · {request.width}×{request.height} · {request.steps} steps · seed {seed}"


# Pydantic's wording of a bound, as a person would say it (the UI's messages; the APIs keep pydantic's).
PLAIN_BOUNDS = {"Input should be less than or equal to": "must be at most",
                "Input should be greater than or equal to": "must be at least",
                "Input should be less than": "must be under", "Input should be greater than": "must be over"}


def check_seed_box(value: Any) -> None:
    """The Seed box takes -1 (a new seed each run) or 0..MAX_SEED, as its hint says."""
    seed = as_int(value, "seed")
    if seed is not None and seed < 0 and seed != RANDOM_SEED:
        raise InvalidRequest(f"seed: {seed} is not a seed; {RANDOM_SEED} draws a new one each run, "
                             f"0..{MAX_SEED} repeats one", field="seed")


def nothing_selected(message: str = "Select an image in the gallery first.") -> str:
    """The one message of a button that needs a selected image, pressed with none."""
    return status_html(message)


def edit_mode(on: bool) -> tuple:
    """The edit-mode state, the main button's label and the Clear button beside it."""
    return on, gr.Button(value="Edit" if on else "Generate"), gr.Button(visible=on)


def accepts_size(spec: ModelSpec, width: int, height: int) -> bool:
    """Whether the model takes ``width``×``height`` as it is (its sizes, multiple, sides and pixels)."""
    lim = spec.limits
    if lim.allowed_sizes:
        return (width, height) in lim.allowed_sizes
    return (width % lim.size_multiple == 0 and height % lim.size_multiple == 0
            and all(lim.min_side <= side <= lim.max_side for side in (width, height))
            and width * height <= lim.max_pixels)
