"""The ``Studio`` handlers behind every event of the page (``on_<thing>_<event>``): plain functions of
component values that return component updates, bound to one catalog, backend and outputs folder.
"""

from __future__ import annotations

import asyncio
import html
import random
import time
from pathlib import Path
from typing import Any, Mapping

import gradio as gr
from PIL import Image

from studio import editor, pngmeta
from studio.backend import Backend
from studio.catalog import Catalog, ModelSpec
from studio.config import Settings
from studio.errors import InvalidRequest, JobCancelled, StudioError
from studio.history import History, owner_dir
from studio.jobs import ANONYMOUS
from studio.owners import address_owner
from studio.schemas import DEFAULT_STRENGTH, MAX_SEED, GenerationRequest, Progress, parse_size
from studio.ui.api import ApiHandlers
from studio.ui.controls import RANDOM_SEED, model_updates, request_value
from studio.ui.inputs import accepts_size, as_int, box_label, int_or_none, path_of, refused, result_params, user_error
from studio.ui.styles import NO_STYLE, Style, load_styles
from studio.ui.text import card_html, describe, size_hint, size_value, slots_html, status_html

Updates = dict[str, Any]  # a handler's answer: component updates by the component's name (ui.wiring)
SESSION_RESULTS = 24  # images kept in a browser session's results gallery
HISTORY_SHOWN = 60
UI_PREVIEWS = 4  # live previews of a job in the Create tab
CANCEL_SETTLE_S = 5.0  # Cancel waits at most this long for the generate handlers to let go of their jobs
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

    def ui_message(self, exc: StudioError) -> str:
        """An error as the page says it: the box's own name where it differs from the field's
        ("num_images" is the box "Images") and plain words for a bound."""
        message = exc.message
        for wording, plain in PLAIN_BOUNDS.items():
            message = message.replace(wording, plain)
        label, prefix = box_label(exc.field), f"{exc.field}:"
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

    def resolve(self, values: Mapping[str, Any], image: bytes | None = None, mask: bytes | None = None,
                previews: int = 0):
        """Validate the values of the controls or the API, by request field name (and ``style``), once
        (pydantic limits, then the model's own) into a resolved request. An input ``image`` (and ``mask``)
        makes it an edit (image-to-image, inpainting)."""
        spec = self.catalog.get(values.get("model"))
        seed = as_int(values.get("seed"), "seed")
        text, negative = (values.get("prompt") or "").strip(), (values.get("negative_prompt") or "").strip()
        if text:  # an empty prompt stays empty, styled or not, so validation names it
            text, negative = self.style(values.get("style")).apply(text, negative, spec.negative_prompt)
        fields = {name: request_value(name, value) for name, value in values.items()
                  if name in GenerationRequest.model_fields}
        return self.catalog.parse(fields | dict(
            prompt=text,
            negative_prompt=negative or None,
            model=spec.id,
            seed=None if seed == RANDOM_SEED else seed,
            num_images=fields.get("num_images") or 1,
            image=image,
            mask=mask if image is not None else None,
            strength=fields.get("strength") if image is not None else None,
            previews=previews,
        ))

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

    async def on_generate_click(self, edit_image, editing: bool, session_images: list, request: gr.Request,
                                **controls):
        """The Generate (or, in edit mode, Edit) button: live status while it runs, then the images and
        their parameters. ``controls``: every control Generate reads, by name (``controls.GENERATION``).

        Every error stays in the status line alone (no toast, no "Error" label on the last good image),
        worded with the boxes' own names, and the newest image ends selected with its parameters beside it.
        """
        try:
            spec = self.catalog.get(controls.get("model"))
            if not spec.negative_prompt:
                controls["negative_prompt"] = ""  # the box is hidden for this model; a leftover must not fail the job
            check_seed_box(controls.get("seed"))
            # Only in edit mode, and only for models that can edit: a leftover image must not make an edit.
            editing = bool(editing) and len(spec.tasks) > 1
            image, mask = editor.edit_files(edit_image) if editing else (None, None)
            if image is not None and as_int(controls.get("steps"), "steps") == spec.defaults.steps:
                controls["steps"] = None  # the default steps, raised for an edit where strength x steps is under one step
            if not (controls.get("prompt") or "").strip() and image is None:
                # The box's placeholder reads like a prompt: say so once, in the status line, no toast.
                yield {"job_status": status_html(EMPTY_PROMPT, error=True)}
                return
            spec, resolved = self.resolve(controls, image=image, mask=mask, previews=UI_PREVIEWS)
        except StudioError as exc:
            refused(exc.message, exc.status)
            yield {"job_status": status_html(self.ui_message(exc), error=True)}
            return
        edit = resolved.task != "text-to-image"
        yield {"job_status": status_html("Starting the edit" if edit else "Starting", 0.0, running=True)}
        no_preview = gr.Image(None, visible=False)
        try:
            session = request.session_hash if request else None
            async for item in self.run(spec, resolved, session, self.saved_history(request), self.job_owner(request)):
                if isinstance(item, Progress):
                    preview = editor.preview_image(item)
                    if preview is not None:
                        yield {"live_preview": gr.Image(preview, visible=True)}
                        continue
                    text, fraction = describe(item, spec, editing=edit)
                    yield {"job_status": status_html(text, fraction, running=True)}
                else:
                    files, result = item
        except JobCancelled:
            yield {"job_status": status_html("Cancelled."), "live_preview": no_preview}
            return
        except StudioError as exc:
            refused(exc.message, exc.status)
            yield {"job_status": status_html(self.ui_message(exc), error=True), "live_preview": no_preview}
            return
        fresh = [(str(path), self._caption(resolved, seed)) for path, seed in zip(files, resolved.seeds)]
        session_images = (fresh + list(session_images or []))[:SESSION_RESULTS]
        count = len(files)
        done = (f"Done: {count} image{'s' if count > 1 else ''}{' edited' if edit else ''} in {result.duration_s:.1f} s"
                f" · seed{'s' if count > 1 else ''} {', '.join(map(str, resolved.seeds))}"
                + (f" · slot {result.slot}" if result.slot is not None else ""))
        yield {"job_status": status_html(done, 1.0), "results": gr.Gallery(value=session_images, selected_index=0),
               "params": result_params(resolved, result, controls.get("style") or NO_STYLE, files),
               "session_images": session_images, "selected": str(files[0]), "live_preview": no_preview}

    def on_model_edit_support(self, model: str, edit_image, editing: bool) -> Updates:
        """The edit panel shows for models that can edit; edit mode holds only for them."""
        able = len(self.catalog.get(model).tasks) > 1
        return {"edit_panel": gr.Accordion(visible=able), **self.on_edit_mode(edit_image, opened=able and bool(editing))}

    def on_edit_upload(self, model: str, edit_image, panel_open: bool) -> Updates:
        """A new input image sets the size to its own, fitted to the model's rules, and turns edit mode on
        while the panel is open (the editor also re-uploads its layers by itself, after a collapse too)."""
        background = edit_image.get("background") if isinstance(edit_image, dict) else None
        if background is None:
            return edit_mode(False)
        spec = self.catalog.get(model)
        width, height = spec.fit_size(*background.size)
        return {"width": width, "height": height, "size": size_value(spec, width, height),
                **edit_mode(bool(panel_open))}

    def on_edit_change(self, edit_image, strength) -> Updates:
        """Strength follows the task's default (``schemas.DEFAULT_STRENGTH``) as painting turns an
        image-to-image into an inpainting and back, unless the user moved it to a value of their own."""
        task = editor.edit_task(edit_image)
        if task is None or strength not in DEFAULT_STRENGTH.values():
            return {}
        return {"strength": DEFAULT_STRENGTH[task]}

    def on_send_to_edit(self, model: str, selected: str | None) -> Updates:
        """Put the selected image into the edit panel of the Create tab, its size fitted to the model, and
        turn edit mode on. With nothing selected: only a message (in the tab's status line)."""
        if not selected:
            return {"job_status": nothing_selected()}
        try:
            with Image.open(selected) as image:
                image.load()
                background = image.convert("RGB")
        except OSError:
            return {"job_status": status_html("That image is no longer in the outputs folder.", error=True)}
        spec = self.catalog.get(model)
        if len(spec.tasks) < 2:
            able = ", ".join(s.label for s in self.catalog if len(s.tasks) > 1)
            return {"job_status": status_html(f"{spec.label} cannot edit images; models that can: {able}.", error=True)}
        width, height = spec.fit_size(*background.size)
        return {"edit_image": {"background": background, "layers": [], "composite": background},
                "edit_panel": gr.Accordion(open=True), "panel_open": True, "width": width, "height": height,
                "size": size_value(spec, width, height), "tabs": gr.Tabs(selected="create"), **edit_mode(True),
                "job_status": status_html("Edit mode: Edit repaints this image (Clear or collapsing the panel "
                                          "turns it off).")}

    def on_edit_mode(self, edit_image, opened: bool = True) -> Updates:
        """The panel opened or closed, or its image changed: edit mode is on while it is open and holds an image."""
        has_image = isinstance(edit_image, dict) and edit_image.get("background") is not None
        return edit_mode(opened and has_image)

    def on_edit_panel_expand(self, edit_image) -> Updates:
        return {"panel_open": True, **self.on_edit_mode(edit_image)}

    def on_edit_panel_collapse(self) -> Updates:
        return {"panel_open": False, **edit_mode(False)}

    def on_edit_clear(self) -> Updates:
        """The Clear button beside Edit: no input image, edit mode off."""
        return {"edit_image": None, **edit_mode(False),
                "job_status": status_html("Edit mode off: Generate makes a new image.")}

    async def on_cancel_click(self, request: gr.Request) -> Updates:
        """Stop this browser's jobs in their workers (queued ones leave the queue at once), and hide the live
        preview (Gradio cancels the generate handler, which then never gets to). Async, on the event loop with
        the generate handlers that fill ``_jobs``; it answers once they let go of the jobs, so that no step
        update of theirs can come after (and cover) "Cancelled."."""
        session = request.session_hash if request else None
        jobs = list(self._jobs.get(session, ()))
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + CANCEL_SETTLE_S
        while self._jobs.get(session, set()) & set(jobs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {"job_status": status_html("Cancelled." if jobs else "Nothing to cancel."),
                "live_preview": gr.Image(None, visible=False)}

    def on_model_change(self, model: str, width=None, height=None, size_chosen: bool = False,
                        loras: list | None = None) -> Updates:
        """The new model's controls. A size the user chose (typed or picked, not the last model's default)
        is kept where the model takes it; otherwise the nearest size it takes, said in the status line.
        The LoRA picks that fit the new model stay picked."""
        spec = self.catalog.get(model)
        typed = int_or_none(width), int_or_none(height)
        kept_loras = dict(loras=loras or [])
        if not size_chosen or None in typed:
            return model_updates(spec, kept_loras, self.catalog.lora_listing())
        if not accepts_size(spec, *typed):
            kept = spec.fit_size(*typed)
            note = (f"Size: {typed[0]}×{typed[1]} does not suit {spec.label} ({size_hint(spec).rstrip('.')}); "
                    f"now {kept[0]}×{kept[1]}.")
            sized = dict(width=kept[0], height=kept[1], **kept_loras)
            return {**model_updates(spec, sized, self.catalog.lora_listing()), "job_status": status_html(note)}
        return model_updates(spec, dict(width=typed[0], height=typed[1], **kept_loras), self.catalog.lora_listing())

    def on_card_use(self, model_id: str, loras: list | None = None) -> Updates:
        """A "Use" button on the Models tab: pick the model with its recommended settings (keeping the LoRA
        picks that fit it), go to the studio and say what it set (steps and guidance sit in the collapsed
        Advanced panel)."""
        spec = self.catalog.get(model_id)
        use = {**spec.recommended(), "loras": loras or []}
        d = spec.defaults
        set_ = f"steps {use['steps']}" + (f", guidance {use['guidance']:g}" if spec.cfg else "")
        note = (f"Using {spec.label}: {set_}, size {d.width}×{d.height} (steps and guidance are in "
                f"Advanced settings).")
        return {"model": spec.id, **model_updates(spec, use, self.catalog.lora_listing()), "tabs": gr.Tabs(selected="create"),
                "job_status": status_html(note)}

    def on_size_pick(self, size: str | None) -> Updates:
        if not size:
            return {}
        width, height = parse_size(size)
        return {"width": width, "height": height}

    def on_size_edit(self, model: str, width, height) -> Updates:
        return {"size": size_value(self.catalog.get(model), int_or_none(width), int_or_none(height))}

    def on_seed_randomise(self) -> Updates:
        """A concrete new seed in the box, so the next run can be repeated exactly."""
        return {"seed": random.randint(0, MAX_SEED)}

    def on_seed_reuse(self, selected: str | None) -> Updates:
        """The seed of the selected result (the newest after each run) back in the box; else a message."""
        seed = None
        if selected:
            try:
                seed = pngmeta.read(selected).get("seed")
            except OSError:
                pass
        if seed is None:
            return {"job_status": nothing_selected("No image yet: generate one, or select one in the results, "
                                                   "to reuse its seed.")}
        return {"seed": int(seed), "job_status": status_html(f"Seed {seed} is in the Seed box.")}

    def on_gallery_select(self, session_images: list, evt: gr.SelectData) -> Updates:
        """Show the parameters stored in the selected image's PNG; remember its path for "reuse"."""
        if not session_images or evt.index is None or evt.index >= len(session_images):
            return {"params": {}, "selected": None}
        path = path_of(session_images[evt.index])
        try:
            params = pngmeta.read(path)
        except OSError:
            params = {}
        params.pop(pngmeta.A1111_KEY, None)
        return {"params": params, "selected": path}

    def on_history_refresh(self, history_filter: str | None, request: gr.Request) -> Updates:
        """This login's images, newest first, those matching the filter words; their count in the label."""
        entries = self.shown_history(request).entries(query=history_filter or "")
        items = [(str(entry.path), entry.caption) for entry in entries]
        query = (history_filter or "").strip()
        label = f"History: {len(items)} image{'' if len(items) == 1 else 's'}" + (
            f" matching “{query}”" if query else "") + " (newest first)"
        return {"history": gr.Gallery(value=items, label=label, selected_index=None), "history_items": items}

    def on_history_delete(self, history_selected: str | None, history_filter: str | None,
                          request: gr.Request) -> Updates:
        """Delete the selected image's file (only that one), show the history without it, and keep its bytes
        for Undo."""
        path = history_selected
        if not path:
            return {"history_status": nothing_selected("Select an image in the history first.")}
        history = self.shown_history(request)
        if not history.holds(path):
            return {"history_status": status_html("That image is not in your history.", error=True)}
        try:
            png = Path(path).read_bytes()  # kept for Undo
            history.delete(path)
        except OSError:
            return {"history_status": status_html("That image is no longer in the outputs folder.", error=True)}
        return {**self.on_history_refresh(history_filter, request), "history_params": {}, "history_selected": None,
                "deleted": {"path": path, "png": png}, "history_undo": gr.Button(visible=True),
                "history_status": status_html(f"Deleted {Path(path).name}. Undo brings it back.")}

    def on_history_undo(self, deleted: dict | None, history_filter: str | None, request: gr.Request) -> Updates:
        """Put the last deleted image back where it was."""
        gone = {"deleted": None, "history_undo": gr.Button(visible=False)}
        if not deleted:
            return {**gone, "history_status": status_html("Nothing to undo.")}
        path = Path(deleted["path"])
        if not self.shown_history(request).holds(path):
            return {**gone, "history_status": status_html("That image is not in your history.", error=True)}
        path.write_bytes(deleted["png"])
        return {**self.on_history_refresh(history_filter, request), **gone,
                "history_status": status_html(f"Restored {path.name}.")}

    def on_reuse_click(self, selected: str | None) -> Updates:
        """Fill every control from the selected image's metadata, ready to generate it again; the message
        goes to the status line of the tab the button is on. With nothing selected only the message changes."""
        if not selected:
            return {"job_status": nothing_selected()}
        try:
            params = pngmeta.read(selected)
        except OSError:
            return {"job_status": status_html("That image is no longer in the outputs folder.", error=True)}
        if not params.get("model") or not params.get("prompt"):
            return {"job_status": status_html("That image has no Image Studio parameters to reuse.", error=True)}
        try:
            spec = self.catalog.get(params["model"])
        except StudioError as exc:
            return {"job_status": status_html(exc.message, error=True)}
        seed = params.get("seed")
        return {
            "model": spec.id,
            **model_updates(spec, params, self.catalog.lora_listing()),
            "prompt": params["prompt"],
            "style": NO_STYLE,  # the stored prompt already has the style in it
            "seed": seed if seed is not None else RANDOM_SEED,
            "num_images": 1,
            "tabs": gr.Tabs(selected="create"),
            "job_status": status_html(f"Reused the settings of {Path(selected).name}: Generate makes it again."),
        }

    def on_status_tick(self) -> Updates:
        try:
            status = self.backend.status()
        except Exception as exc:  # status is a nicety; never break the page over it
            return {"slot_status": f'<span title="{html.escape(str(exc))}">status unavailable</span>'}
        return {"slot_status": slots_html(status)}

    def on_models_select(self) -> Updates:
        """The Models tab's cards, redrawn with what is on disk now and where each model is loaded."""
        loaded = self.loaded_plans()
        return {model_card(spec.id): card_html(spec, disk=self.disk(spec), sizes=self.sizes(spec),
                                               loaded=loaded.get(spec.id))
                for spec in self.catalog}

    def loaded_plans(self) -> dict[str, str]:
        """Each resident model's slots and memory plans: ``{"flux-dev": "cuda:0 (fp8 plan)"}``."""
        try:
            slots = self.backend.status().slots
        except Exception:  # status is a nicety; never break the page over it
            return {}
        loaded: dict[str, list[str]] = {}
        for slot in slots:
            if slot.model:
                loaded.setdefault(slot.model, []).append(f"{slot.device} ({slot.plan or 'full'} plan)")
        return {model: ", ".join(places) for model, places in loaded.items()}

    def disk(self, spec: ModelSpec) -> dict:
        """``{"on_disk", "download_bytes"}`` from the download phase in front of the backend, if there is one."""
        status = getattr(self.backend, "disk_status", None)
        return status(spec.id) if status else {}

    def sizes(self, spec: ModelSpec):
        """The model's component sizes from its files, where the download phase knows them (else None)."""
        sizes = getattr(self.backend, "weights", None)
        return sizes(spec.id) if sizes else None

    def _resolve_or_error(self, values: Mapping[str, Any], **edit):
        try:
            return self.resolve(values, **edit)
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


def edit_mode(on: bool) -> Updates:
    """The edit-mode state, the main button's label and the Clear button beside it."""
    return {"editing": on, "generate": gr.Button(value="Edit" if on else "Generate"),
            "edit_clear": gr.Button(visible=on)}


def model_card(model_id: str) -> str:
    """The name of a model's card on the Models tab."""
    return f"card_{model_id}"
