"""The Gradio API's endpoints (``/generate``, ``/edit``, ``/models``, ``/status``) for gradio_client.

Their inputs default to ``None`` so each model's own defaults apply. Gradio builds each endpoint's
parameters and docs from the method's signature and docstring.
"""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

from studio import editor, uploads
from studio.catalog import ModelSpec
from studio.errors import StudioError
from studio.owners import may_see_owners
from studio.schemas import GenerationRequest, Progress, value_type
from studio.ui.inputs import as_int, result_params, user_error
from studio.ui.styles import NO_STYLE
from studio.ui.text import describe


def arguments(names: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's values by name (its ``locals()`` on entry): its parameters are the request fields'
    names, and ``style``."""
    return {name: value for name, value in names.items() if name not in ("self", "request", "progress")}


class ApiHandlers:
    """The Gradio API half of ``Studio`` (which provides ``resolve``, ``run`` and the history)."""

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
        loras: list | str | None = None,
        sampler: str | None = None,
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
            loras: LoRAs of /loras that fit the model: [{"name": ..., "scale": 0.8}] or "NAME:SCALE, ..."
            sampler: a sampler of the model's `samplers` in /models, by A1111's name ("Euler a", "DPM++ 2M Karras"); default: the model's own
        """
        spec, resolved = self._resolve_or_error(arguments(locals()))
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
        loras: list | str | None = None,
        sampler: str | None = None,
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
            loras: LoRAs of /loras that fit the model: [{"name": ..., "scale": 0.8}] or "NAME:SCALE, ..."
            sampler: a sampler of the model's `samplers` in /models, by A1111's name ("Euler a", "DPM++ 2M Karras"); default: the model's own
        """
        values = arguments(locals())
        try:
            spec = self.catalog.get(model)
            data = editor.read_file(image, "image")
            mask_data = editor.read_file(mask, "mask") if mask else None
            upload = uploads.check_image(data)
            if mask_data is not None:
                uploads.check_mask(mask_data, upload)
            if as_int(width, "width") is None and as_int(height, "height") is None:
                values["width"], values["height"] = spec.fit_size(upload.width, upload.height)
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None
        values["model"] = spec.id
        spec, resolved = self._resolve_or_error(values, image=data, mask=mask_data)
        return await self._api_run(spec, resolved, style, request, progress)

    def api_inputs(self, endpoint) -> list[gr.components.Component]:
        """The (hidden) input components of an endpoint, one per parameter, in the order of its signature;
        each defaults to the parameter's default, so each model's defaults apply."""
        components = []
        for name, parameter in inspect.signature(endpoint).parameters.items():
            default = None if parameter.default is inspect.Parameter.empty else parameter.default
            if name in ("image", "mask"):
                components.append(gr.Image(label=name, type="filepath"))
            elif name == "model":
                components.append(gr.Dropdown([spec.id for spec in self.catalog], value=None, allow_custom_value=True,
                                              label=f"model (none: the default, {self.catalog.get(None).id})"))
            elif name == "style":
                components.append(gr.Dropdown(list(self.styles), label=name, value=default))
            elif name in GenerationRequest.model_fields:
                kind = value_type(GenerationRequest.model_fields[name])
                if kind is str:
                    components.append(gr.Textbox(label=name, value=default))
                elif kind in (int, float):
                    components.append(gr.Number(label=name, value=default, precision=0 if kind is int else None))
                else:  # a list (loras): JSON, or the field's own text form
                    components.append(gr.JSON(label=name, value=default))
        return components

    def api_models(self) -> list[dict]:
        """The catalog in rank order: each model's ranking, recommendation, capabilities, defaults and limits."""
        return [spec.listing(self.sizes(spec)) | self.disk(spec) for spec in self.catalog]

    def api_loras(self) -> list[dict]:
        """The LoRAs of the library: name, family, the models that take each, size, trigger words, hash."""
        return self.catalog.lora_listing()

    def api_status(self, request: gr.Request = None) -> dict:
        """The slots (device, model, busy) and how many jobs wait in the queue; each owner's jobs for an admin."""
        status = self.backend.status()
        login = self.owner(request)
        return status.as_dict() if may_see_owners(self.settings, False, login) else status.without_owners()

    async def _api_run(self, spec: ModelSpec, resolved: GenerationRequest, style: str | None,
                       request: gr.Request | None, progress: gr.Progress) -> tuple[list[str], dict]:
        """A Gradio API job to its end (``/generate``, ``/edit``): progress through Gradio's own tracker,
        then the saved PNG files and their parameters."""
        try:
            session = request.session_hash if request else None
            async for item in self.run(spec, resolved, session, self.saved_history(request), self.job_owner(request)):
                if isinstance(item, Progress):
                    text, fraction = describe(item, spec)
                    progress(fraction, desc=text)
                else:
                    files, result = item
        except StudioError as exc:
            raise user_error(exc.message, exc.status) from None
        return [str(path) for path in files], result_params(resolved, result, style or NO_STYLE, files)
