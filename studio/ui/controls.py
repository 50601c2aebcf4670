"""The Create tab's generation controls, each declared once: its component, what it shows for a model, and
whether Generate reads it. Named after the ``GenerationRequest`` field it sets (label from its ``Faces``).

A new control is one ``Control`` here: the page builds it (in Advanced settings unless the layout places
it), Generate passes its value to the request field of its name, and a model change or Reuse updates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import gradio as gr

from studio import families
from studio.catalog import ModelSpec
from studio.schemas import DEFAULT_STRENGTH, MAX_IMAGES, MAX_SEED, GenerationRequest, faces, value_type
from studio.ui.inputs import as_float, as_int
from studio.ui.styles import NO_STYLE
from studio.ui.text import (card_html, guidance_hint, negative_placeholder, size_choices, size_hint, size_value,
                            stars_text, steps_hint)

if TYPE_CHECKING:
    from studio.ui.handlers import Studio

RANDOM_SEED = -1  # the UI's "draw a new seed each run"
MODEL_SAMPLER = "The model's own"  # the sampler dropdown's first choice: the scheduler the model ships

Props = dict[str, Any]


@dataclass(frozen=True)
class Control:
    """One control of the Create tab.

    ``follow(spec, values)`` gives the properties that depend on the model: the page is built with them for
    its first model and updated with them when the model changes or Reuse fills the page (``values``: what
    to show instead of the model's defaults, by name). ``props`` are the fixed ones.
    """

    name: str  # the GenerationRequest field it sets (or, with generate=False, a page-only name)
    kind: Callable[..., gr.components.Component]
    props: Callable[[Studio], Props] = lambda studio: {}
    follow: Callable[[ModelSpec, Mapping[str, Any]], Props] | None = None
    generate: bool = True  # Generate reads it: a request field (or the style, applied to the prompt)

    def make(self, studio: Studio, spec: ModelSpec) -> gr.components.Component:
        props: Props = {"elem_id": self.name.replace("_", "-")}
        if self.name in GenerationRequest.model_fields:
            props["label"] = faces(self.name).label
        props |= self.props(studio)
        props |= self.follow(spec, {"lora_library": studio.catalog.lora_listing()}) if self.follow else {}
        return self.kind(**props)

    def update(self, spec: ModelSpec, values: Mapping[str, Any]) -> dict:
        return gr.update(**self.follow(spec, values))


def _model_choices(studio: Studio) -> Props:
    choices = [(f"{spec.card.rank}. {spec.label} {stars_text(spec.card.stars)}", spec.id) for spec in studio.catalog]
    return dict(choices=choices, value=studio.catalog.get(None).id, info="Compare them all on the Models tab.")


def _negative(spec: ModelSpec, values: Mapping) -> Props:
    shown = {"value": values["negative_prompt"] or ""} if "negative_prompt" in values else {}
    return dict(visible=spec.negative_prompt, placeholder=negative_placeholder(spec), **shown)


def _strength(studio: Studio) -> Props:
    able = ", ".join(spec.label for spec in studio.catalog if len(spec.tasks) > 1)
    return dict(minimum=0.05, maximum=1.0, step=0.05, value=DEFAULT_STRENGTH["image-to-image"],
                info=f"How much is repainted: low keeps the input. Models: {able}")


def _size(spec: ModelSpec, values: Mapping) -> tuple[int, int]:
    return values.get("width", spec.defaults.width), values.get("height", spec.defaults.height)


def _sampler(spec: ModelSpec, values: Mapping) -> Props:
    """The model's samplers; "" is its own scheduler (the request's None). A sampler kept over a model change
    or filled by Reuse only where this model takes it."""
    chosen = values.get("sampler") or ""
    return dict(choices=[(MODEL_SAMPLER, "")] + [(name, name) for name in spec.samplers],
                value=chosen if chosen in spec.samplers else "")


def _loras(spec: ModelSpec, values: Mapping) -> Props:
    """The LoRAs of the library that fit the model (``values["lora_library"]``, the listing), each offered at
    weight 1 with its trigger words; another weight is typed as NAME:WEIGHT. Reuse fills the image's own; a
    model change keeps the picks that fit the new model and drops those the listing says do not (a name the
    library lacks, such as a hub LoRA, stays: it is checked when it runs)."""
    library = values.get("lora_library", ())
    fitting = [lora for lora in library if spec.id in lora["models"]]
    offered = [(lora["name"] + "".join(f" · {word}" for word in lora["trigger_words"]), f"{lora['name']}:1")
               for lora in fitting]
    unfit = {lora["name"] for lora in library} - {lora["name"] for lora in fitting}
    chosen = [f"{lora['name']}:{lora['scale']:g}" if isinstance(lora, dict) else str(lora)
              for lora in values.get("loras") or ()]
    chosen = [text for text in chosen if _lora_name(text) not in unfit] if families.takes_loras(spec.family) else []
    offered += [(text, text) for text in chosen if text not in [value for _, value in offered]]
    triggers = "; ".join(f"{lora['name']}: {', '.join(lora['trigger_words'])}" for lora in fitting
                         if lora["trigger_words"])
    info = (f"LoRAs for {spec.label}; type NAME:WEIGHT for another weight (-4..4)"
            + (f". Trigger words: {triggers}" if triggers else "") if fitting
            else f"No LoRA in the LoRA folder fits {spec.label}.")
    return dict(choices=offered, value=chosen, info=info, visible=families.takes_loras(spec.family))


def _lora_name(pick: str) -> str:
    """The name of a picker value, NAME or NAME:WEIGHT (as ``LoraUse.parse`` reads it)."""
    return pick.strip().rpartition(":")[0].strip() if ":" in pick else pick.strip()


def _guidance_fixed(spec: ModelSpec) -> bool:
    return spec.limits.min_guidance == spec.limits.max_guidance


CONTROLS: dict[str, Control] = {control.name: control for control in [
    Control("model", gr.Dropdown, _model_choices),
    Control("card", gr.HTML, lambda studio: dict(elem_id="model-card"),
            lambda spec, values: dict(value=card_html(spec, compact=True)), generate=False),
    Control("loras", gr.Dropdown, lambda studio: dict(multiselect=True, allow_custom_value=True), _loras),
    Control("prompt", gr.Textbox, lambda studio: dict(
        lines=3, placeholder="A lighthouse on a cliff at dusk, warm light in the windows")),
    Control("negative_prompt", gr.Textbox, lambda studio: dict(lines=2), _negative),
    Control("strength", gr.Slider, _strength),
    Control("style", gr.Dropdown, lambda studio: dict(
        choices=[(style.label, style.id) for style in studio.styles.values()], value=NO_STYLE, label="Style")),
    Control("size", gr.Radio, lambda studio: dict(label="Size", elem_id="size-presets"),
            lambda spec, values: dict(choices=size_choices(spec), value=size_value(spec, *_size(spec, values))),
            generate=False),
    # precision None: a typed 200.5 reaches the validation instead of being rounded.
    Control("width", gr.Number, follow=lambda spec, values: dict(
        value=_size(spec, values)[0], interactive=not spec.limits.allowed_sizes, info=size_hint(spec))),
    Control("height", gr.Number, follow=lambda spec, values: dict(
        value=_size(spec, values)[1], interactive=not spec.limits.allowed_sizes)),
    # Number boxes, not sliders: a slider silently clamps a typed 400 to its top; a box passes it on to the
    # one validation, which says the model's range.
    Control("steps", gr.Number, lambda studio: dict(min_width=140), lambda spec, values: dict(
        value=values.get("steps", spec.defaults.steps), info=steps_hint(spec))),
    Control("guidance", gr.Number, lambda studio: dict(step=0.1, min_width=140), lambda spec, values: dict(
        value=values.get("guidance", spec.defaults.guidance), info=guidance_hint(spec),
        visible=spec.cfg and not _guidance_fixed(spec))),
    Control("sampler", gr.Dropdown, lambda studio: dict(
        info="A1111's names; each model lists only the samplers it can run."), _sampler),
    Control("guidance_note", gr.Markdown, lambda studio: dict(elem_id=None), lambda spec, values: dict(
        visible=not spec.cfg or _guidance_fixed(spec),
        value=f"Guidance is fixed at **{spec.limits.min_guidance:g}** for {spec.label} (guidance-distilled)."),
        generate=False),
    Control("seed", gr.Number, lambda studio: dict(
        value=RANDOM_SEED, scale=4, info=f"{RANDOM_SEED}: a new seed each run; 0..{MAX_SEED} repeats one")),
    Control("num_images", gr.Number, lambda studio: dict(value=1, info=f"1..{MAX_IMAGES} in one batch")),
]}
FOLLOWERS = [name for name, control in CONTROLS.items() if control.follow]  # what a model change updates
GENERATION = [name for name, control in CONTROLS.items() if control.generate]  # what Generate reads


def model_updates(spec: ModelSpec, values: Mapping[str, Any] | None = None, library: list | None = None
                  ) -> dict[str, dict]:
    """Updates of every control that depends on the model, with its defaults or ``values`` (by name);
    ``library``: the LoRA listing (``Catalog.lora_listing``), for the LoRA picker."""
    values = {**(values or {}), "lora_library": library or []}
    return {name: CONTROLS[name].update(spec, values) for name in FOLLOWERS}


def request_value(name: str, value: Any) -> Any:
    """A control's value as its request field takes it: numbers checked whole where the field is an ``int``."""
    field = GenerationRequest.model_fields[name]
    kind = value_type(field)
    if kind is str and value == "" and field.default is None:
        return None  # an empty choice (the sampler's "the model's own") is the model's default
    if kind is int:
        return as_int(value, name)
    if kind is float:
        return as_float(value)
    return value
