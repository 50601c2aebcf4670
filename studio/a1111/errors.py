"""Errors of the ``/sdapi`` routes in A1111's shape, never a traceback.

A refused value is a 422 with FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``, whether pydantic or the
studio refused it (``loc`` names the A1111 field). A method a route does not take is FastAPI's own 405
``{"detail": "Method Not Allowed"}``. Any other failure keeps its status (401, 429 with Retry-After, 503,
504...) with A1111's ``{"error", "detail", "body", "errors"}``.
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from studio.errors import InvalidRequest, QueueFull, Unauthorized
from studio.openai_api import request_error

MAX_ECHO = 200  # characters of a refused value repeated back: a base64 image must not come back whole


def error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, RequestValidationError):
        return JSONResponse({"detail": [validation_item(item) for item in exc.errors()]}, status_code=422)
    error = request_error(exc)  # unexpected ones are logged there, not shown
    if error.status == 405:  # FastAPI's own answer, as A1111 (a FastAPI app) gives it; the Allow header says which
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)
    if isinstance(error, InvalidRequest) or error.code == "model_not_found":
        loc = ["body", *(error.field or "body").split(".")]
        return JSONResponse({"detail": [{"loc": loc, "msg": error.message, "type": "value_error"}]}, status_code=422)
    headers = {}
    if isinstance(error, QueueFull):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Basic"
    body = {"error": type(error).__name__, "detail": error.message, "body": "", "errors": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)


def validation_item(item: dict) -> dict:
    """FastAPI's error item with its JSON-safe parts: location, message, type, and a short echo of the input."""
    found = {"loc": list(item.get("loc", ())), "msg": str(item.get("msg", "invalid value")), "type": item.get("type")}
    if isinstance(item.get("input"), (str, int, float, bool)) and len(str(item["input"])) <= MAX_ECHO:
        found["input"] = item["input"]
    return found
