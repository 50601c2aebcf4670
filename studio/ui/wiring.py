"""Events wired by name: a handler's parameters are named after the page's components, and it returns (or
yields) ``{name: update}``, so no handler depends on the order of an inputs or outputs list.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterable, Mapping

import gradio as gr
from gradio.blocks import Block

from studio.catalog import ModelSpec
from studio.ui.controls import CONTROLS, GENERATION


class Page:
    """The page's components by name (the handlers' names for them), and the events wired by those names."""

    def __init__(self, studio, spec: ModelSpec):
        self.studio, self.spec = studio, spec  # the controls are built for the page's first model
        self.components: dict[str, Block] = {}

    def control(self, name: str) -> gr.components.Component:
        """Build the control ``name`` (``controls.CONTROLS``) here, in the layout."""
        self.components[name] = CONTROLS[name].make(self.studio, self.spec)
        return self.components[name]

    def unplaced(self) -> list[str]:
        """The controls the layout has not placed yet (a new control goes where the layout calls this)."""
        return [name for name in CONTROLS if name not in self.components]

    def add(self, names: Mapping[str, Any]) -> None:
        """Name the components among ``names`` (``locals()`` of the layout: each by its variable's name)."""
        self.components |= {name: value for name, value in names.items() if isinstance(value, Block)}

    def on(self, triggers, handler: Callable, outputs: Iterable[str] = (), names: Mapping[str, str] | None = None,
           **options):
        """Wire ``handler`` to ``triggers`` (one event, e.g. ``button.click`` or ``dependency.then``, or a list
        of them): each parameter named after a component gets its value, a ``**controls`` parameter every
        control Generate reads, and its ``{name: update}`` go to those components. ``names`` maps a handler's
        name to another component (the same handler on another tab)."""
        components = self.components | {alias: self.components[name] for alias, name in (names or {}).items()}
        parameters = inspect.signature(handler).parameters
        inputs = [name for name in parameters if name in components]
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            inputs += [name for name in GENERATION if name not in inputs]
        listen = functools.partial(gr.on, triggers) if isinstance(triggers, list) else triggers
        return listen(by_name(handler, components), inputs_kwargs={name: components[name] for name in inputs},
                      outputs=[components[name] for name in outputs], **options)


def by_name(handler: Callable, components: Mapping[str, Block]) -> Callable:
    """``handler`` returning ``{component: update}`` for its ``{name: update}``; Gradio still sees its
    signature (``functools.wraps``), so ``gr.Request``, ``gr.SelectData`` and the keyword inputs reach it."""
    def keyed(updates: dict) -> dict:
        # Nothing to update is Gradio's skip (an empty dict would be taken as one output's value).
        return {components[name]: value for name, value in updates.items()} if updates else gr.skip()

    if inspect.isasyncgenfunction(handler):
        @functools.wraps(handler)
        async def stream(*args, **kwargs):
            async with contextlib.aclosing(handler(*args, **kwargs)) as answers:  # a cancel closes it too
                async for updates in answers:
                    yield keyed(updates)
        return stream
    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def call_async(*args, **kwargs):
            return keyed(await handler(*args, **kwargs))
        return call_async

    @functools.wraps(handler)
    def call(*args, **kwargs):
        return keyed(handler(*args, **kwargs))
    return call
