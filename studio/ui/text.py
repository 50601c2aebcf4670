"""The Create and Models tabs' words and HTML: hints, cards, the status line and the slot pills.

Pure functions of the catalog's specs and the backend's status; no Gradio, no handlers.
"""

from __future__ import annotations

import html

from studio import hub, memory
from studio.backend import BackendStatus
from studio.catalog import ModelSpec
from studio.schemas import JobStage, Progress

# Named aspect ratios for the size buttons; anything else shows its pixels only.
RATIOS = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (5, 4), (4, 5), (5, 3), (3, 5), (21, 9), (9, 21)]


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
    defaults = f"the defaults of {spec.build}" if spec.build else "the authors' defaults"
    if not card.recommended:
        return f"{defaults}: {loads}"
    text = f"{card.recommended}" + (" (published)" if spec.build else "") + f" (Use loads {loads})"
    differs = [steps_count(d.steps) if use["steps"] != d.steps else "",
               f"guidance {d.guidance:g}" if spec.cfg and use["guidance"] != d.guidance else ""]
    differs = [part for part in differs if part]
    if differs:
        text += f"; a request that leaves them unset gets {defaults}: {', '.join(differs)}"
    return text


def memory_text(spec: ModelSpec, sizes=None) -> str:
    """``memory.describe`` and the published figure: ``sizes`` are the files' (``memory.Weights``), else the
    catalog's estimate."""
    listed = spec.memory(sizes)
    published = listed["published"]
    return memory.describe(listed) + (f"; {published:g} GB published" if published is not None else "")


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


def card_html(spec: ModelSpec, compact: bool = False, disk: dict | None = None, sizes=None,
              loaded: str | None = None) -> str:
    """A model's card: rank and stars, best use, recommended settings, memory and repo id."""
    e = html.escape
    card = spec.card
    rows = [
        ("Best for", e(card.best_for)),
        ("Recommended", e(recommended_text(spec))),
        ("Memory", e(memory_text(spec, sizes) + (f"; loaded on {loaded}" if loaded else ""))),
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
    if spec.build:  # a local folder's studio.toml changed the limits: say whose they are
        rows.append(("Limits", e(f"from {spec.build}, not the published model")))
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


def status_html(text: str, fraction: float | None = None, error: bool = False, running: bool = False) -> str:
    """The live status line, with a progress bar when ``fraction`` is known. ``running``: a job of this
    page is in flight (the page shows Cancel only then)."""
    css = "status-line" + (" status-error" if error else "") + (" running" if running else "")
    bar = ""
    if fraction is not None:
        bar = f'<div class="studio-progress"><div style="width: {max(0.0, min(1.0, fraction)) * 100:.0f}%"></div></div>'
    return f'<div class="{css}">{html.escape(text)}</div>{bar}'


def describe(event: Progress, spec: ModelSpec, editing: bool = False) -> tuple[str, float | None]:
    """A progress event in words, and how far along it is."""
    slot = f" on slot {event.slot}" if event.slot is not None else ""
    if event.stage == JobStage.QUEUED:
        return queued_text(event.queue_position, event.wait_s, event.queue_length), None
    if event.stage == JobStage.DOWNLOADING:  # "Downloading FLUX.1 [schnell]: 12.4 of 33.9 GB, 85 MB/s, about 4 min"
        fraction = event.bytes_done / event.bytes_total if event.bytes_total else None
        return event.detail or f"Downloading {spec.label}", fraction
    if event.stage == JobStage.LOADING:
        return f"Loading {spec.label}{slot} (the first run of a model takes a while)", None
    if event.stage == JobStage.GENERATING:
        return f"{'Editing' if editing else 'Generating'}{slot}", 0.0
    if event.stage == JobStage.STEP and event.total:
        return f"Step {event.step} / {event.total}{slot}", event.step / event.total
    if event.stage == JobStage.ENCODING:
        return "Saving the images", 1.0
    return f"{event.stage.capitalize()}{slot}", None


def queued_text(position: int | None, wait_s: float | None = None, length: int | None = None) -> str:
    """"In line for a free slot: position 3 of 7 (all users' jobs; 2 ahead of yours), expected wait
    about 40 s" (the length and the wait where the backend tells them)."""
    if position is None:
        return "In line for a free slot"
    text = f"In line for a free slot: position {position + 1}"
    if length is not None and length > 1:
        ahead = f"{position} ahead of yours" if position else "none ahead of yours"
        text += f" of {length} (all users' jobs; {ahead})"
    if wait_s is not None:
        text += f", expected wait {wait_text(wait_s)}"
    return text + " (Cancel leaves the line)"


def wait_text(seconds: float) -> str:
    return "under 5 s" if seconds < 5 else f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def plan_note(plan: str | None) -> str:
    """`` (fp8)`` after a slot's model when it runs on a plan other than ``full``."""
    return f" ({plan})" if plan and plan != "full" else ""


def slots_html(status: BackendStatus) -> str:
    """One pill per slot ("cuda:0 · sdxl-base · busy") and the queue depth, from ``backend.status()``."""
    pills = []
    for slot in status.slots:
        model = slot.model or "no model"
        if slot.loading:
            text, css = f"loading {slot.loading}", "busy"
        elif slot.busy:
            text, css = f"{model}{plan_note(slot.plan)} · busy", "busy"
        elif slot.state == "ready":
            text, css = f"{model}{plan_note(slot.plan)} · idle", "idle"
        else:  # starting, or dead and waiting for its restart
            text, css = "restarting" if slot.state == "dead" else slot.state, "busy"
        device = html.escape(slot.device)
        pills.append(f'<span class="slot {css}">{device} · {html.escape(text)}</span>')
    queued = status.queue_depth + status.waiting_room
    return f'{"".join(pills)} <span class="queue">{queued} queued</span>'
