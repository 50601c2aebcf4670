"""The ``/sdapi/v1`` routes: thin, as the OpenAI ones are. Each image request becomes ONE ``GenerationRequest``
(``translate``), is submitted to the backend, followed for GET progress (``callers``) and answered in
A1111's shape (``answers``). Closing the connection cancels the job, as on ``/v1``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from studio.a1111 import answers, translate
from studio.a1111.auth import Caller, require_caller
from studio.a1111.bodies import IGNORED, REFUSED, Img2ImgRequest, OptionsUpdate, Txt2ImgRequest
from studio.a1111.callers import Callers
from studio.a1111.sampling import sampler_names
from studio.errors import StudioError
from studio.history import owner_dir
from studio.openai_api import CLIENT_CLOSED, save_images, wait_for_result

PREFIX = "/sdapi"
router = APIRouter(prefix=f"{PREFIX}/v1", dependencies=[Depends(require_caller)], tags=["A1111-compatible"])


def callers(request: Request) -> Callers:
    return request.app.state.a1111


def default_model(request: Request, caller: Caller) -> str | None:
    return callers(request).checkpoints.get(caller.options)


# The docs of both image routes: what they accept with no effect, and what they refuse (bodies.py).
FIELDS_DOC = (f"Accepted and ignored, as A1111 ignores what it does not use: {', '.join(IGNORED)}. "
              f"Refused when true (or set): {', '.join(REFUSED)}.")


@router.post("/txt2img", response_model=answers.ImagesAnswer, summary="Text to image (A1111 API)",
             description="batch_size x n_iter images (at most 4) in one batch. Closing the connection or POST "
             f"interrupt stops it. {FIELDS_DOC}")
async def txt2img(body: Txt2ImgRequest, request: Request, caller: Caller = Depends(require_caller)):
    spec, resolved = translate.txt2img(request.app.state.catalog, body, default_model(request, caller))
    return await run(request, caller, body, spec, resolved)


@router.post("/img2img", response_model=answers.ImagesAnswer, summary="Image to image and inpainting (A1111 API)",
             description="The first of init_images repainted after the prompt; with a mask, only where it is "
             f"white. {FIELDS_DOC}")
async def img2img(body: Img2ImgRequest, request: Request, caller: Caller = Depends(require_caller)):
    catalog = request.app.state.catalog
    spec, resolved = await run_in_threadpool(translate.img2img, catalog, body, default_model(request, caller))
    return await run(request, caller, body, spec, resolved)


async def run(request: Request, caller: Caller, body: Txt2ImgRequest, spec, resolved) -> Response:
    state = request.app.state
    job = state.backend.submit(spec, resolved, caller.jobs)
    followed = callers(request).follow(caller.jobs, job)
    try:
        result = await wait_for_result(job, request, state.settings.job_timeout_s)
    except StudioError as exc:
        if followed.interrupted and exc.code == "cancelled":
            return await run_in_threadpool(answers.images_answer, body, None, True)
        raise
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    await run_in_threadpool(save_images, owner_dir(state.settings.outputs_dir, caller.owner, kind="api"), result)
    return await run_in_threadpool(answers.images_answer, body, result, followed.interrupted)


@router.get("/progress", summary="The caller's running job (A1111 API)")
async def progress(request: Request, skip_current_image: bool = False, caller: Caller = Depends(require_caller)):
    """progress 0..1, eta_relative in seconds, state.job_count (the caller's jobs not ended), current_image."""
    known = callers(request)
    return answers.progress(known.current(caller.jobs), len(known.pending(caller.jobs)), skip_current_image)


@router.post("/interrupt", summary="Stop the caller's jobs (A1111 API)")
async def interrupt(request: Request, caller: Caller = Depends(require_caller)):
    """Every job of the caller, running or queued, stops; their calls answer with no images."""
    callers(request).stop(caller.jobs)


@router.post("/skip", summary="Stop the caller's running job (A1111 API)")
async def skip(request: Request, caller: Caller = Depends(require_caller)):
    """The caller's running job stops (a call's n_iter batches run as one, so its whole call); queued ones go on."""
    callers(request).stop(caller.jobs, running_only=True)


@router.get("/options", summary="Options: the caller's sd_model_checkpoint (A1111 API)")
async def get_options(request: Request, caller: Caller = Depends(require_caller)):
    catalog = request.app.state.catalog
    return answers.options(catalog.get(default_model(request, caller)))


@router.post("/options", summary="Set the caller's sd_model_checkpoint (A1111 API)")
async def set_options(body: OptionsUpdate, request: Request, caller: Caller = Depends(require_caller)):
    """With --api-key, per key owner; without keys, for every caller (A1111's global option). Other options
    are accepted and ignored."""
    if body.sd_model_checkpoint:
        spec = translate.checkpoint(request.app.state.catalog, body.sd_model_checkpoint)
        callers(request).checkpoints[caller.options] = spec.id


@router.get("/sd-models", summary="The models, best first (A1111 API)")
async def sd_models(request: Request):
    return answers.catalog_titles(request.app.state.catalog)


@router.get("/samplers", summary="The samplers of the caller's checkpoint (A1111 API)")
async def samplers(request: Request, caller: Caller = Depends(require_caller)):
    """What the caller's sd_model_checkpoint (POST options) can run, as A1111 lists what its loaded model can:
    name and aliases (sampler_name takes either; scheduler takes GET schedulers' names)."""
    return answers.samplers(sampler_names(request.app.state.catalog.get(default_model(request, caller))))


@router.get("/schedulers", summary="Schedule types (A1111 API)")
async def schedulers():
    return answers.schedulers()


@router.get("/upscalers", summary="Upscalers: only 'None' here (A1111 API)")
async def upscalers():
    return answers.UPSCALERS


@router.get("/loras", summary="LoRAs of --lora-dir, for <lora:NAME:WEIGHT> in prompts (A1111 API)")
async def loras(request: Request):
    return await run_in_threadpool(answers.loras, request.app.state.catalog)  # reads (and hashes) new files


@router.post("/refresh-loras", summary="Rescan --lora-dir (A1111 API)")
async def refresh_loras(request: Request) -> None:
    """Reads (and hashes) the LoRA files new since the last listing; A1111 answers null."""
    await run_in_threadpool(request.app.state.catalog.lora_listing)


@router.post("/refresh-checkpoints", summary="Checkpoints: fixed at start here (A1111 API)")
async def refresh_checkpoints() -> None:
    """A no-op answering null as A1111 does: the catalog (and each worker's copy) is read once at start."""


@router.get("/cmd-flags", summary="A few of A1111's command-line flags, as true of this server (A1111 API)")
async def cmd_flags(request: Request) -> dict:
    """Only flags whose meaning holds here; never a key, a login or a machine path."""
    settings = request.app.state.settings
    return {"api": True, "nowebui": False, "listen": settings.host not in ("127.0.0.1", "localhost"),
            "port": settings.port}


def empty_list(what: str):
    async def route() -> list:
        return []

    route.__doc__ = f"{what}: none here (an empty list, which A1111 clients read as none)."
    return route


for path, what in (("latent-upscale-modes", "Latent upscale modes"), ("sd-vae", "VAEs"),
                   ("sd-modules", "Text encoder and VAE modules")):
    router.add_api_route(f"/{path}", empty_list(what), methods=["GET"], summary=f"{what} (A1111 API)")


# Registered after ``router``: any other /sdapi path (the UI at "/" would answer it with its own page). A1111 is a
# FastAPI app: a path it does not serve is FastAPI's plain 404, which its clients read as "not this feature".
outside = APIRouter(prefix=PREFIX, dependencies=[Depends(require_caller)], include_in_schema=False)


@outside.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown_route() -> JSONResponse:
    """Other /sdapi routes are not served: A1111's (FastAPI's) 404 body; the docs list those that are."""
    return JSONResponse({"detail": "Not Found"}, status_code=404)
