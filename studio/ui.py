"""The Gradio studio: ``build_ui(catalog, backend, settings) -> gr.Blocks``.

Laid out as constants, then the ``Studio`` handlers (``on_<thing>_<event>``,
plain functions of component values that return component updates), then the
layout, then the wiring. Everything is built from the catalog, so each model
shows only the controls it supports.

The page has two faces on one queue: the browser UI (private events) and the
Gradio API for ``gradio_client`` (``/generate``, ``/models``, ``/status``),
whose inputs default to ``None`` so each model's own defaults apply.

Never imports torch: this runs in the parent process.
"""

from __future__ import annotations

import html
import logging
import math
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from studio import editor, hub, pngmeta, uploads
from studio.backend import Backend, BackendStatus
from studio.catalog import Catalog, ModelSpec
from studio.config import Settings
from studio.errors import InvalidRequest, JobCancelled, StudioError
from studio.history import History, owner_dir
from studio.schemas import MAX_IMAGES, MAX_SEED, GenerationRequest, JobResult, Progress

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- constants

ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = ROOT / "assets"
STYLES_FILE = ROOT / "presets" / "styles.toml"

NO_STYLE = "none"
RANDOM_SEED = -1  # the UI's "draw a new seed each run"
CONCURRENCY_ID = "generate"  # UI and API generations share one limit: the number of slots
SESSION_RESULTS = 24  # images kept in a browser session's results gallery
HISTORY_SHOWN = 60
STATUS_EVERY_S = 2.0
UI_PREVIEWS = 4  # live previews of a job in the Create tab
DEFAULT_STRENGTH = 0.75
CACHE_CLEANUP = (3600, 6 * 3600)  # Gradio's served copies; the outputs folder keeps the originals

# Named aspect ratios for the size buttons; anything else shows its pixels only.
RATIOS = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (5, 4), (4, 5), (5, 3), (3, 5), (21, 9), (9, 21)]


@dataclass(frozen=True)
class Style:
    id: str
    label: str
    prompt: str
    negative: str = ""

    def apply(self, prompt: str, negative: str, supports_negative: bool) -> tuple[str, str]:
        """The prompt inside this style's template; its negative joins the user's where the model takes one."""
        styled = self.prompt.replace("{prompt}", prompt) if self.prompt else prompt
        if supports_negative and self.negative:
            negative = f"{negative}, {self.negative}" if negative else self.negative
        return styled, negative


def load_styles(path: Path = STYLES_FILE) -> dict[str, Style]:
    """``presets/styles.toml`` with "no style" first."""
    data = tomllib.loads(path.read_text())
    styles = {NO_STYLE: Style(NO_STYLE, "No style", "{prompt}")}
    for style_id, table in data.get("styles", {}).items():
        styles[style_id] = Style(id=style_id, **table)
    return styles


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


# ---------------------------------------------------------------- pure helpers


def user_error(message: str, status: int = 400) -> gr.Error:
    """The error a user sees, logged here in one line instead of Gradio's traceback of our re-raise.

    For a StudioError, pass ``exc.message, exc.status``: refusals (4xx) log at INFO, failures at WARNING.
    Unexpected exceptions are not turned into this: Gradio prints their traceback.
    """
    if status >= 500:
        log.warning("failed: %s", message)
    else:
        log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def ratio_name(width: int, height: int) -> str | None:
    for w, h in RATIOS:
        if abs(width / height - w / h) < 0.03:
            return f"{w}:{h}"
    return None


def size_choices(spec: ModelSpec) -> list[tuple[str, str]]:
    """The size buttons of a model: ``("1024×768 · 4:3", "1024x768")``; its default size first."""
    sizes = spec.size_presets()
    default = (spec.defaults.width, spec.defaults.height)
    if default not in sizes:
        sizes = [default, *sizes]
    choices = []
    for width, height in sizes:
        ratio = ratio_name(width, height)
        label = f"{width}×{height}" + (f" · {ratio}" if ratio else "")
        choices.append((label, f"{width}x{height}"))
    return choices


def size_value(spec: ModelSpec, width: int | None, height: int | None) -> str | None:
    """The size button matching ``width``×``height``, or None when it is a custom size."""
    value = f"{width}x{height}"
    return value if any(choice == value for _, choice in size_choices(spec)) else None


def size_hint(spec: ModelSpec) -> str:
    lim = spec.limits
    if lim.allowed_sizes:
        return f"{spec.label} only knows the sizes above."
    return f"Multiple of {lim.size_multiple}, {spec.allowed('width')} px, up to {lim.max_pixels / 1e6:.1f} MP."


def steps_hint(spec: ModelSpec) -> str:
    hint = f"{spec.allowed('steps')} for {spec.label}"
    return f"{hint}; {steps_text(spec)}" if steps_text(spec) else hint


def negative_placeholder(spec: ModelSpec) -> str:
    if spec.defaults.negative_prompt:
        return f"Empty uses {spec.label}'s default: {spec.defaults.negative_prompt}"
    return "What to avoid: blurry, text, watermark"


def stars_text(stars: float) -> str:
    """``4.5`` as ``★★★★½``."""
    whole = int(stars)
    return "★" * whole + ("½" if stars - whole >= 0.5 else "")


def steps_count(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def recommended_text(spec: ModelSpec) -> str:
    """The published recommendation, what "Use" loads, and the authors' default where a request gets another."""
    card, d = spec.card, spec.defaults
    use = spec.recommended()
    loads = steps_count(use["steps"]) + (f", guidance {use['guidance']:g}" if spec.cfg else "")
    if not card.recommended:
        return f"the authors' defaults: {loads}"
    text = f"{card.recommended} (Use loads {loads})"
    differs = [steps_count(d.steps) if use["steps"] != d.steps else "",
               f"guidance {d.guidance:g}" if spec.cfg and use["guidance"] != d.guidance else ""]
    differs = [part for part in differs if part]
    if differs:
        text += f"; a request that leaves them unset gets the authors' default: {', '.join(differs)}"
    return text


def memory_text(spec: ModelSpec) -> str:
    published = spec.card.memory_gb
    if published is None or published == spec.vram_gb:
        return f"about {spec.vram_gb:g} GB"
    return f"about {published:g} GB published; {spec.vram_gb:g} GB by the studio's count"


def steps_text(spec: ModelSpec) -> str | None:
    """What the one Steps slider sets, for a model with a second stage (Stable Cascade)."""
    if not spec.decoder_steps:
        return None
    return (f"the Steps slider sets the prior (stage C, {spec.defaults.steps} by default); "
            f"the decoder (stage B) always runs {spec.decoder_steps}")


def disk_text(disk: dict) -> str | None:
    """"on disk", "downloads 6.9 GB on first use" (from ``DownloadGate.disk_status``); None: not known."""
    if disk.get("on_disk"):
        return "on disk"
    if disk.get("on_disk") is False:
        size = disk.get("download_bytes")
        return f"downloads {hub.format_size(size)} on first use" if size else "downloads on first use"
    return None


def card_html(spec: ModelSpec, compact: bool = False, disk: dict | None = None) -> str:
    """A model's card: rank and stars, best use, recommended settings, memory and repo id."""
    e = html.escape
    card = spec.card
    rows = [
        ("Best for", e(card.best_for)),
        ("Recommended", e(recommended_text(spec))),
        ("Memory", e(memory_text(spec))),
    ]
    if steps_text(spec):
        rows.append(("Steps", e(steps_text(spec))))
    if not compact:
        rows.insert(0, ("Strengths", e(card.strengths)))
        rows += [
            ("Text encoder", f"{e(spec.text_encoder)} ({spec.token_limit} tokens)"),
            ("Negative prompt", "yes" if spec.negative_prompt else "no"),
            ("Guidance", "adjustable" if spec.cfg else f"fixed at {spec.limits.min_guidance:g} (distilled)"),
            ("Max size", f"{spec.limits.max_side} px side"),
        ]
    link = f'<a href="https://huggingface.co/{e(spec.repo)}" target="_blank"><code>{e(spec.repo)}</code></a>'
    rows.append(("Repo", link))
    if disk_text(disk or {}):
        rows.append(("Weights", e(disk_text(disk))))
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return (
        f'<div class="model-card" data-model="{e(spec.id)}" data-rank="{card.rank}">'
        f'<h3><span class="rank" title="rank {card.rank} of the studio\'s ranking">#{card.rank}</span>'
        f'{e(spec.label)} <span class="stars" title="{card.stars:g} of 5 stars">{stars_text(card.stars)}</span></h3>'
        f'<div class="group">{e(card.group)}</div><dl>{items}</dl></div>'
    )


def guidance_hint(spec: ModelSpec) -> str:
    return f"{spec.allowed('guidance')} for {spec.label}"


def status_html(text: str, fraction: float | None = None, error: bool = False) -> str:
    """The live status line, with a progress bar when ``fraction`` is known."""
    css = "status-line status-error" if error else "status-line"
    bar = ""
    if fraction is not None:
        bar = f'<div class="studio-progress"><div style="width: {max(0.0, min(1.0, fraction)) * 100:.0f}%"></div></div>'
    return f'<div class="{css}">{html.escape(text)}</div>{bar}'


def describe(event: Progress, spec: ModelSpec) -> tuple[str, float | None]:
    """A progress event in words, and how far along it is."""
    slot = f" on slot {event.slot}" if event.slot is not None else ""
    if event.stage == "queued":
        position = event.queue_position
        return (f"Waiting for a free slot: position {position + 1} in the queue" if position is not None
                else "Waiting for a free slot"), None
    if event.stage == "downloading":  # "Downloading FLUX.1 [schnell]: 12.4 of 33.9 GB, 85 MB/s, about 4 min"
        done, total = event.extra.get("bytes_done", 0), event.extra.get("bytes_total", 0)
        return event.extra.get("message", f"Downloading {spec.label}"), (done / total if total else None)
    if event.stage == "loading":
        return f"Loading {spec.label}{slot} (the first run of a model takes a while)", None
    if event.stage == "generating":
        return f"Generating{slot}", 0.0
    if event.stage == "step" and event.total:
        return f"Step {event.step} / {event.total}{slot}", event.step / event.total
    if event.stage == "encoding":
        return "Saving the images", 1.0
    return f"{event.stage.capitalize()}{slot}", None


def result_params(request: GenerationRequest, result: JobResult, style: str, files: list[Path]) -> dict:
    """The parameters shown next to the images and returned by the API: enough to reproduce each one."""
    params = request.model_dump()
    params.update(
        seeds=request.seeds,
        task=request.task,
        style=style,
        slot=result.slot,
        duration_s=round(result.duration_s, 3),
        files=[path.name for path in files],
    )
    return params


def _int(value: Any, name: str) -> int | None:
    """A whole number from a UI or API value (``None`` stays ``None``: the model's default)."""
    if value is None or value == "":
        return None
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise InvalidRequest(f"{name}: {value} must be a whole number", field=name)
    return int(number)


def _float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def slot_count(backend: Backend | None, settings: Settings) -> int:
    """How many jobs can run at once: the backend's slots, else the configured devices, else one."""
    try:
        slots = backend.status().slots
    except Exception:  # no backend, or one that cannot report yet: fall back to the settings
        slots = ()
    if slots:
        return len(slots)
    return max(1, len(settings.devices))


# ---------------------------------------------------------------- handlers


class Studio:
    """The handlers behind every event of the page, bound to one catalog, backend and outputs folder."""

    def __init__(self, catalog: Catalog, backend: Backend | None, settings: Settings, styles: dict[str, Style] | None = None):
        self.catalog = catalog
        self.backend = backend
        self.settings = settings
        self.styles = styles or load_styles()
        self.prune(History(settings.outputs_dir, everything=True))
        self._jobs: dict[str, set] = {}  # browser session -> its running jobs, for the Cancel button

    # -- whose images: each login its own folder --------------------------------

    def owner(self, request: gr.Request | None) -> str | None:
        """The login behind a request when the UI has logins, else None (one shared outputs folder)."""
        if not self.settings.ui_auth or request is None:
            return None
        return getattr(request, "username", None)

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

    # -- building a request ---------------------------------------------------

    def style(self, style_id: str | None) -> Style:
        key = (style_id or NO_STYLE).strip().lower()
        if key not in self.styles:
            known = ", ".join(self.styles)
            raise InvalidRequest(f"style: unknown style '{style_id}'; available: {known}", field="style")
        return self.styles[key]

    def resolve(self, prompt, model, negative_prompt, width, height, steps, guidance, seed, num_images, style,
                image: bytes | None = None, mask: bytes | None = None, strength=None, previews: int = 0):
        """Validate the inputs once (pydantic limits, then the model's own) into a resolved request.
        An input ``image`` (and ``mask``) makes it an edit (image-to-image, inpainting)."""
        spec = self.catalog.get(model)
        seed = _int(seed, "seed")
        text, negative = (prompt or "").strip(), (negative_prompt or "").strip()
        if text:  # an empty prompt stays empty, styled or not, so validation names it
            text, negative = self.style(style).apply(text, negative, spec.negative_prompt)
        return self.catalog.parse(
            dict(
                prompt=text,
                negative_prompt=negative or None,
                model=spec.id,
                width=_int(width, "width"),
                height=_int(height, "height"),
                steps=_int(steps, "steps"),
                guidance=_float(guidance),
                seed=None if seed == RANDOM_SEED else seed,
                num_images=_int(num_images, "num_images") or 1,
                image=image,
                mask=mask if image is not None else None,
                strength=_float(strength) if image is not None else None,
                previews=previews,
            )
        )

    # -- running a job ---------------------------------------------------------

    async def run(self, spec: ModelSpec, request: GenerationRequest, session: str | None, history: History):
        """Submit and follow one job: yields ``Progress`` events, then ``(files, result)`` saved in ``history``.

        Leaving early (Gradio cancelled the event, the browser went away) cancels the job in its worker.
        """
        job = self.backend.submit(spec, request)
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
        edit_value, strength, session_images, request: gr.Request, progress=gr.Progress(),
    ):
        """The Generate button: live status while it runs, then the images and their parameters.

        Every error stays in the status line (a toast alone vanishes), and the newest image ends
        selected in the gallery with its parameters beside it.
        """
        keep = gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()  # the outputs that change later
        try:
            spec = self.catalog.get(model)
            if not spec.negative_prompt:
                negative_prompt = ""  # the box is hidden for this model; a leftover value must not fail the job
            # The edit panel is hidden for models that cannot edit: a leftover image must not fail the job.
            image, mask = editor.edit_files(edit_value) if len(spec.tasks) > 1 else (None, None)
            spec, resolved = self.resolve(
                prompt, model, negative_prompt, width, height, steps, guidance, seed, num_images, style,
                image=image, mask=mask, strength=strength, previews=UI_PREVIEWS,
            )
        except StudioError as exc:
            yield status_html(exc.message, error=True), *keep
            raise user_error(exc.message, exc.status) from None
        session_images = list(session_images or [])
        yield status_html("Starting", 0.0), *keep
        try:
            session = request.session_hash if request else None
            async for item in self.run(spec, resolved, session, self.saved_history(request)):
                if isinstance(item, Progress):
                    preview = editor.preview_image(item)
                    if preview is not None:
                        yield gr.skip(), *keep[1:], gr.Image(preview, visible=True)
                        continue
                    text, fraction = describe(item, spec)
                    progress(fraction, desc=text)
                    yield status_html(text, fraction), *keep
                else:
                    files, result = item
        except JobCancelled:
            yield status_html("Cancelled."), *keep[:-1], gr.Image(None, visible=False)
            return
        except StudioError as exc:
            yield status_html(exc.message, error=True), *keep[:-1], gr.Image(None, visible=False)
            raise user_error(exc.message, exc.status) from None
        params = result_params(resolved, result, style or NO_STYLE, files)
        fresh = [(str(path), self._caption(resolved, seed)) for path, seed in zip(files, resolved.seeds)]
        session_images = (fresh + session_images)[:SESSION_RESULTS]
        count = len(files)
        done = (f"Done: {count} image{'s' if count > 1 else ''} in {result.duration_s:.1f} s"
                f" · seed{'s' if count > 1 else ''} {', '.join(map(str, resolved.seeds))}"
                + (f" · slot {result.slot}" if result.slot is not None else ""))
        newest = gr.Gallery(value=session_images, selected_index=0)
        yield status_html(done, 1.0), newest, params, session_images, str(files[0]), gr.Image(None, visible=False)

    async def on_api_generate(
        self,
        prompt: str,
        model: str | None = None,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        num_images: int = 1,
        style: str = NO_STYLE,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Generate images. Unset values take the model's defaults; returns the PNG files and their parameters.

        Args:
            prompt: what to draw
            model: a model id or alias from /models (default: the catalog's default model)
            negative_prompt: what to avoid, for models that support it
            width: image width in pixels, within the model's limits
            height: image height in pixels, within the model's limits
            steps: denoising steps, 1 to the model's maximum
            guidance: guidance scale, within the model's range (fixed for distilled models)
            seed: seed of the first image; image i uses seed + i (default: random)
            num_images: 1 to 4 images in one batch
            style: a style preset id, or "none"
        """
        spec, resolved = self._resolve_or_error(
            prompt, model, negative_prompt, width, height, steps, guidance, seed, num_images, style
        )
        return await self._api_run(spec, resolved, style, request, progress)

    async def on_api_edit(
        self,
        image: str,
        prompt: str,
        mask: str | None = None,
        model: str | None = None,
        strength: float | None = None,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        num_images: int = 1,
        style: str = NO_STYLE,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Edit an image: image-to-image, or inpainting with a mask. Returns the PNG files and their parameters.

        Args:
            image: the input image (PNG, JPEG or WebP)
            prompt: what the result should show
            mask: optional; where its alpha is 0 (or, without alpha, where it is white) the image is repainted
            model: a model that can edit (see /models: tasks); default: the catalog's default model
            strength: 0..1, how much is repainted (default 0.75 without a mask, 1.0 with one)
            negative_prompt: what to avoid, for models that support it
            width: result width; default: the input's size fitted to the model's limits
            height: result height; default: the input's size fitted to the model's limits
            steps: denoising steps of the full schedule; an edit runs steps x strength of them
            guidance: guidance scale, within the model's range
            seed: seed of the first image; image i uses seed + i (default: random)
            num_images: 1 to 4 images in one batch
            style: a style preset id, or "none"
        """
        try:
            spec = self.catalog.get(model)
            data = editor.read_file(image, "image")
            mask_data = editor.read_file(mask, "mask") if mask else None
            upload = uploads.check_image(data)
            if mask_data is not None:
                uploads.check_mask(mask_data, upload)
            if _int(width, "width") is None and _int(height, "height") is None:
                width, height = spec.fit_size(upload.width, upload.height)
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None
        spec, resolved = self._resolve_or_error(
            prompt, spec.id, negative_prompt, width, height, steps, guidance, seed, num_images, style,
            image=data, mask=mask_data, strength=strength,
        )
        return await self._api_run(spec, resolved, style, request, progress)

    def on_model_edit_support(self, model_id: str):
        """The edit panel shows for models that can edit."""
        return gr.Accordion(visible=len(self._spec_or_error(model_id).tasks) > 1)

    def on_edit_upload(self, model_id: str, edit_value):
        """A new input image sets the size to its own, fitted to the model's rules."""
        background = edit_value.get("background") if isinstance(edit_value, dict) else None
        if background is None:
            return gr.skip(), gr.skip(), gr.skip()
        spec = self._spec_or_error(model_id)
        width, height = spec.fit_size(*background.size)
        return width, height, size_value(spec, width, height)

    def on_send_to_edit(self, model_id: str, path: str | None):
        """Put the selected image into the edit panel of the Create tab, its size fitted to the model."""
        if not path:
            raise user_error("Select an image in the gallery first.")
        try:
            with Image.open(path) as image:
                image.load()
                background = image.convert("RGB")
        except OSError:
            raise user_error("That image is no longer in the outputs folder.") from None
        spec = self._spec_or_error(model_id)
        width, height = spec.fit_size(*background.size)
        value = {"background": background, "layers": [], "composite": background}
        return (value, gr.Accordion(open=True), width, height, size_value(spec, width, height),
                gr.Tabs(selected="create"))

    async def on_cancel_click(self, request: gr.Request):
        """Stop this browser's jobs in their workers (queued ones leave the queue at once).

        Async, so it runs on the event loop with the generate handlers that fill ``_jobs``. It also hides
        the live preview: Gradio cancels the generate handler, which then never gets to."""
        jobs = list(self._jobs.get(request.session_hash if request else None, ()))
        for job in jobs:
            job.cancel()
        return status_html("Cancelled." if jobs else "Nothing to cancel."), gr.Image(None, visible=False)

    # -- model and size controls ---------------------------------------------

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

    def on_model_change(self, model_id: str) -> tuple:
        return self.model_controls(self.catalog.get(model_id))

    def on_card_use(self, model_id: str) -> tuple:
        """A "Use" button on the Models tab: pick the model with its recommended settings and go to the studio."""
        spec = self.catalog.get(model_id)
        return (spec.id, *self.model_controls(spec, spec.recommended()), gr.Tabs(selected="create"))

    def on_size_pick(self, size: str | None):
        if not size:
            return gr.skip(), gr.skip()
        width, height = (int(part) for part in size.split("x"))
        return width, height

    def on_size_edit(self, model_id: str, width, height):
        return size_value(self.catalog.get(model_id), _int_or_none(width), _int_or_none(height))

    def on_seed_randomise(self) -> int:
        """A concrete new seed in the box, so the next run can be repeated exactly."""
        return random.randint(0, MAX_SEED)

    def on_seed_reuse(self, path: str | None) -> int:
        """The seed of the selected result (the newest after each run) back in the box."""
        seed = None
        if path:
            try:
                seed = pngmeta.read(path).get("seed")
            except OSError:
                pass
        if seed is None:
            raise user_error("No image yet: generate one, or select one in the results, to reuse its seed.")
        return int(seed)

    # -- results, history and reuse -------------------------------------------

    def on_gallery_select(self, images: list, evt: gr.SelectData):
        """Show the parameters stored in the selected image's PNG; remember its path for "reuse"."""
        if not images or evt.index is None or evt.index >= len(images):
            return {}, None
        path = _path_of(images[evt.index])
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
        """Delete the selected image's file (only that one), then show the history without it."""
        if not path:
            raise user_error("Select an image in the history first.")
        try:
            self.shown_history(request).delete(path)
        except PermissionError:
            raise user_error("That image is not in your history.") from None
        gallery, items = self.on_history_refresh(query, request)
        return gallery, items, {}, None

    def on_reuse_click(self, path: str | None):
        """Fill every control from the selected image's metadata, ready to generate it again."""
        if not path:
            raise user_error("Select an image in the gallery first.")
        try:
            params = pngmeta.read(path)
        except OSError:
            raise user_error("That image is no longer in the outputs folder.") from None
        if not params.get("model") or not params.get("prompt"):
            raise user_error("That image has no Image Studio parameters to reuse.")
        spec = self._spec_or_error(params["model"])
        seed = params.get("seed")
        return (
            spec.id,
            *self.model_controls(spec, params),
            params["prompt"],
            NO_STYLE,  # the stored prompt already has the style in it
            seed if seed is not None else RANDOM_SEED,
            1,
            gr.Tabs(selected="create"),
        )

    # -- server status and the JSON API ---------------------------------------

    def on_status_tick(self) -> str:
        try:
            status = self.backend.status()
        except Exception as exc:  # status is a nicety; never break the page over it
            return f'<span title="{html.escape(str(exc))}">status unavailable</span>'
        return slots_html(status)

    def api_models(self) -> list[dict]:
        """The catalog in rank order: each model's ranking, recommendation, capabilities, defaults and limits."""
        return [spec.listing() | self.disk(spec) for spec in self.catalog]

    def on_models_select(self) -> list[str]:
        """The Models tab's cards, redrawn with what is on disk now (in the order the tab lists them)."""
        return [card_html(spec, disk=self.disk(spec)) for _, specs in self.catalog.grouped() for spec in specs]

    def disk(self, spec: ModelSpec) -> dict:
        """``{"on_disk", "download_bytes"}`` from the download phase in front of the backend, if there is one."""
        status = getattr(self.backend, "disk_status", None)
        return status(spec.id) if status else {}

    def api_status(self) -> dict:
        """The slots (device, model, busy) and how many jobs wait in the queue."""
        return self.backend.status().as_dict()

    # -- small helpers ---------------------------------------------------------

    def _spec_or_error(self, model: str | None) -> ModelSpec:
        try:
            return self.catalog.get(model)
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None

    def _resolve_or_error(self, *values, **edit):
        try:
            return self.resolve(*values, **edit)
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None

    async def _api_run(self, spec: ModelSpec, resolved: GenerationRequest, style: str | None,
                       request: gr.Request | None, progress: gr.Progress) -> tuple[list[str], dict]:
        """A Gradio API job to its end (``/generate``, ``/edit``): progress through Gradio's own tracker,
        then the saved PNG files and their parameters."""
        try:
            session = request.session_hash if request else None
            async for item in self.run(spec, resolved, session, self.saved_history(request)):
                if isinstance(item, Progress):
                    text, fraction = describe(item, spec)
                    progress(fraction, desc=text)
                else:
                    files, result = item
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None
        return [str(path) for path in files], result_params(resolved, result, style or NO_STYLE, files)

    @staticmethod
    def _caption(request: GenerationRequest, seed: int) -> str:
        return f"{request.model} · {request.width}×{request.height} · {request.steps} steps · seed {seed}"


def _int_or_none(value) -> int | None:
    try:
        return _int(value, "size")
    except (InvalidRequest, TypeError, ValueError):
        return None


def _path_of(item) -> str:
    """A gallery item (path, or ``(path, caption)``, or Gradio's dict) as a file path."""
    if isinstance(item, (list, tuple)):
        item = item[0]
    if isinstance(item, dict):
        item = (item.get("image") or {}).get("path") if "image" in item else item.get("path")
    return str(item)


def slots_html(status: BackendStatus) -> str:
    """One pill per slot ("cuda:0 · sdxl-base · busy") and the queue depth, from ``backend.status()``."""
    pills = []
    for slot in status.slots:
        model = slot.model or "no model"
        if slot.loading:
            text, css = f"loading {slot.loading}", "busy"
        elif slot.busy:
            text, css = f"{model} · busy", "busy"
        elif slot.state == "ready":
            text, css = f"{model} · idle", "idle"
        else:  # starting, or dead and waiting for its restart
            text, css = "restarting" if slot.state == "dead" else slot.state, "busy"
        device = html.escape(slot.device)
        pills.append(f'<span class="slot {css}">{device} · {html.escape(text)}</span>')
    queued = status.queue_depth + status.waiting_room
    return f'{"".join(pills)} <span class="queue">{queued} queued</span>'


# ---------------------------------------------------------------- layout and wiring


def build_ui(catalog: Catalog, backend: Backend, settings: Settings) -> gr.Blocks:
    studio = Studio(catalog, backend, settings)
    default = catalog.get(None)
    slots = slot_count(backend, settings)
    private = dict(api_visibility="private", queue=False)
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
            slot_status = gr.HTML(studio.on_status_tick(), elem_id="slot-status", scale=2)

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
                            strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH, step=0.05, label="Strength",
                                                 elem_id="strength",
                                                 info=f"How much is repainted: low keeps the input. Models: {able}")
                        style = gr.Dropdown(style_choices, value=NO_STYLE, label="Style", elem_id="style")
                        size = gr.Radio(size_choices(default), value=size_value(default, default.defaults.width,
                                                                                 default.defaults.height),
                                        label="Size", elem_id="size-presets")
                        with gr.Row():
                            width = gr.Number(default.defaults.width, label="Width", precision=0, elem_id="width",
                                              info=size_hint(default), interactive=not default.limits.allowed_sizes)
                            height = gr.Number(default.defaults.height, label="Height", precision=0, elem_id="height",
                                               interactive=not default.limits.allowed_sizes)
                        with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                            # Number boxes, not sliders: a slider silently clamps a typed 400 to its top;
                            # a box passes it on to the one validation, which says the model's range.
                            with gr.Row():
                                steps = gr.Number(default.defaults.steps, label="Steps", precision=0,
                                                  elem_id="steps", info=steps_hint(default), min_width=140)
                                fixed = default.limits.min_guidance == default.limits.max_guidance
                                guidance = gr.Number(default.defaults.guidance, label="Guidance", step=0.1,
                                                     elem_id="guidance", info=guidance_hint(default),
                                                     visible=default.cfg and not fixed, min_width=140)
                            guidance_note = gr.Markdown(studio.model_controls(default)[-1]["value"],
                                                        visible=not default.cfg or fixed)
                            with gr.Row(elem_id="seed-row"):
                                seed = gr.Number(RANDOM_SEED, label="Seed", precision=0, elem_id="seed", scale=4,
                                                 info=f"{RANDOM_SEED}: a new seed each run; 0..{MAX_SEED} repeats one")
                                randomise = gr.Button("Random", elem_id="seed-random", scale=0, min_width=90,
                                                      size="md")
                                reuse_seed = gr.Button("♻ Reuse", elem_id="seed-reuse", scale=0, min_width=90,
                                                       size="md")
                            num_images = gr.Number(1, label="Images", precision=0, elem_id="num-images",
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
                                model_cards.append(gr.HTML(card_html(spec, disk=studio.disk(spec))))
                                use = gr.Button(f"Use {spec.label}", size="sm", elem_id=f"use-{spec.id}")
                                use.click(studio.on_card_use, gr.State(spec.id),
                                          [model, card, negative, size, width, height, steps, guidance,
                                           guidance_note, tabs], **private)

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

        # The Gradio API: inputs default to None so each model's defaults apply (the UI always sends values).
        with gr.Group(visible=False):
            api_inputs = [
                gr.Textbox(label="prompt"),
                gr.Textbox(label="model", value=None),
                gr.Textbox(label="negative_prompt", value=None),
                gr.Number(label="width", value=None, precision=0),
                gr.Number(label="height", value=None, precision=0),
                gr.Number(label="steps", value=None, precision=0),
                gr.Number(label="guidance", value=None),
                gr.Number(label="seed", value=None, precision=0),
                gr.Number(label="num_images", value=1, precision=0),
                gr.Dropdown([style.id for style in studio.styles.values()], label="style", value=NO_STYLE),
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
        selected = gr.State(None)
        history_items = gr.State([])
        history_selected = gr.State(None)
        timer = gr.Timer(STATUS_EVERY_S)

        # ---------------------------------------------------------------- wiring
        model_outputs = [card, negative, size, width, height, steps, guidance, guidance_note]
        generate_inputs = [prompt, model, negative, width, height, steps, guidance, seed, num_images, style]

        model.input(studio.on_model_change, model, model_outputs, **private)
        size.input(studio.on_size_pick, size, [width, height], **private)
        width.input(studio.on_size_edit, [model, width, height], size, **private)
        height.input(studio.on_size_edit, [model, width, height], size, **private)
        randomise.click(studio.on_seed_randomise, None, seed, **private)
        reuse_seed.click(studio.on_seed_reuse, selected, seed, **private)

        generation = generate.click(  # also Ctrl+Enter in the prompt boxes (assets/studio.js)
            studio.on_generate_click,
            [*generate_inputs, edit_image, strength, session_images],
            [job_status, results, params, session_images, selected, live_preview],
            api_visibility="private",
            concurrency_id=CONCURRENCY_ID,
            concurrency_limit=slots,
            show_progress="minimal",
            show_progress_on=[results],
        )
        generation.then(studio.on_history_refresh, history_filter, [history, history_items], **private)
        cancel.click(studio.on_cancel_click, None, [job_status, live_preview], cancels=[generation], **private)

        results.select(studio.on_gallery_select, session_images, [params, selected], **private)
        history.select(studio.on_gallery_select, history_items, [history_params, history_selected], **private)
        reuse_outputs = [model, *model_outputs, prompt, style, seed, num_images, tabs]
        reuse.click(studio.on_reuse_click, selected, reuse_outputs, **private)
        history_reuse.click(studio.on_reuse_click, history_selected, reuse_outputs, **private)
        models_tab.select(studio.on_models_select, None, model_cards, **private)
        gr.on([refresh.click, history_filter.submit, history_tab.select, demo.load], studio.on_history_refresh,
              history_filter, [history, history_items], **private)
        history_delete.click(studio.on_history_delete, [history_selected, history_filter],
                             [history, history_items, history_params, history_selected], **private)
        timer.tick(studio.on_status_tick, None, slot_status, **private)

        api_trigger.click(
            studio.on_api_generate, api_inputs, api_outputs, api_name="generate",
            concurrency_id=CONCURRENCY_ID, concurrency_limit=slots,
        )
        edit_trigger.click(
            studio.on_api_edit, edit_api_inputs, api_outputs, api_name="edit",
            concurrency_id=CONCURRENCY_ID, concurrency_limit=slots,
        )
        model.change(studio.on_model_edit_support, model, edit_panel, **private)
        edit_image.upload(studio.on_edit_upload, [model, edit_image], [width, height, size], **private)
        edit_outputs = [edit_image, edit_panel, width, height, size, tabs]
        send_to_edit.click(studio.on_send_to_edit, [model, selected], edit_outputs, **private)
        history_edit.click(studio.on_send_to_edit, [model, history_selected], edit_outputs, **private)
        gr.api(studio.api_models, api_name="models", queue=False)
        gr.api(studio.api_status, api_name="status", queue=False)

    demo.queue(max_size=settings.max_queue, default_concurrency_limit=slots)
    return demo

