"""The StudioError family: every failure a caller can see, with its HTTP status.

Errors cross the worker/parent process boundary, so each one pickles with its
message, field and extra details intact (``__reduce__``).
"""

from __future__ import annotations

ECHO_LIMIT = 100  # characters of a caller's value an error repeats: a 1 MB model id must not come back


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A caller's value as an error message may quote it: cut to ``limit`` characters, the cut marked."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class StudioError(Exception):
    """Base error: ``status`` is the HTTP status, ``type``/``code`` the OpenAI error fields.

    A subclass states them in its class line (``class Gone(StudioError, status=410, code="gone")``);
    what it leaves out it inherits.
    """

    status = 500
    type = "server_error"
    code: str | None = None

    def __init_subclass__(cls, *, status: int | None = None, type: str | None = None, code: str | None = None,
                          **kwargs):
        super().__init_subclass__(**kwargs)
        stated = {"status": status, "type": type, "code": code}
        for name, value in stated.items():
            if value is not None:
                setattr(cls, name, value)

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):
        return (self.__class__, (self.message, self.field))

    def to_dict(self) -> dict:
        """The OpenAI error object: ``{"message", "type", "param", "code"}``."""
        param = None if self.field is None else echo(self.field)
        return {"message": self.message, "type": self.type, "param": param, "code": self.code}


class InvalidRequest(StudioError, status=400, type="invalid_request_error", code="invalid_value"):
    """A request field is missing, of the wrong type or out of its range; ``field`` names it."""


class Unauthorized(StudioError, status=401, type="authentication_error", code="invalid_api_key"):
    """No API key, or not one of ``--api-key``'s."""


class UnknownModel(StudioError, status=404, type="invalid_request_error", code="model_not_found"):
    """No catalog model has that id or alias."""


RETRY_AFTER_MAX_S = 300  # Retry-After's ceiling: an estimate further out is too unsure to promise


class QueueFull(StudioError, status=429, type="rate_limit_error", code="queue_full"):
    """No place in the queue within the wait the studio allows; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, field: str | None = None, retry_after_s: int = 5):
        super().__init__(message, field)
        self.retry_after_s = retry_after_s  # when a queue place is expected to free (the Retry-After header)

    @classmethod
    def retry_in(cls, reason: str, seconds: float | None, unknown_s: int) -> QueueFull:
        """``reason``, then when to try again: ``seconds`` as the Retry-After header's whole seconds
        (1 to ``RETRY_AFTER_MAX_S``), or ``unknown_s`` when nothing could be estimated."""
        retry_s = unknown_s if seconds is None else max(1, min(RETRY_AFTER_MAX_S, round(seconds)))
        return cls(f"{reason}; try again in about {retry_s} s", retry_after_s=retry_s)

    def __reduce__(self):
        return (self.__class__, (self.message, self.field, self.retry_after_s))


class JobCancelled(StudioError, status=499, type="cancelled", code="cancelled"):
    """The job was cancelled. 499 is nginx's "client closed request": only a caller that polls a
    cancelled job sees it."""


class JobTimeout(StudioError, status=504, code="timeout"):
    """The job ran past ``--job-timeout`` and was cancelled."""


class OutOfMemory(StudioError, status=503, code="out_of_memory"):
    """The device had no room for the model or the job."""


class WorkerFailed(StudioError, status=503, code="worker_failed"):
    """No worker can run the job: not started, shutting down, or it died under the job."""


class ModelLoadFailed(StudioError, status=503, code="model_load_failed"):
    """The model's files are there but do not load (a catalog mistake, broken files, a load past its timeout)."""


class ModelUnavailable(StudioError, status=503, code="model_unavailable"):
    """The model's weights cannot be had now: not on disk and no hub, gated, missing, a failed download."""


class ModelGated(ModelUnavailable, code="model_gated"):
    """The hub repo is gated: its license must be accepted on its page first."""


class NotEnoughDisk(StudioError, status=507, code="insufficient_storage"):
    """The download would not fit on the disk (the message gives both numbers)."""
