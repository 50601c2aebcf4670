"""Who calls ``/sdapi``: with ``--api-key``, the key sent as ``Authorization: Bearer KEY`` or as HTTP Basic
(any user name, the key as password: A1111's ``--api-auth`` is Basic, and Open WebUI and SillyTavern send it so).

A ``Caller`` says whose options a call reads and writes, and whose jobs GET progress and POST interrupt reach.
Options: each key owner has their own; without keys every caller shares them (A1111's global ones). Jobs: the
studio's owner of a job (``owners.rest_owner``): the key's name, else the client's address, so one machine
cannot interrupt another's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from fastapi import Request

from studio.config import api_keys
from studio.errors import Unauthorized
from studio.openai_api import key_owner
from studio.owners import note_owner, rest_owner

ASK = "send 'Authorization: Bearer <key>', or HTTP Basic auth with the key as password (any user name)"


@dataclass(frozen=True)
class Caller:
    options: str  # whose sd_model_checkpoint: "key:<owner>", or "" (everyone) without keys
    jobs: str  # the owner of its jobs (Backend.submit's): whose jobs progress, interrupt and skip reach
    owner: str | None  # the key's name: the outputs folder of the images (history.owner_dir)


async def require_caller(request: Request) -> Caller:
    """The router's guard: the caller, or ``Unauthorized`` when the server has keys and none matches."""
    request.state.api_owner = None
    keys = api_keys(request.app.state.settings.api_key)
    if not keys:
        return Caller(options="", jobs=rest_owner(request), owner=None)
    key = sent_key(request.headers.get("authorization", ""))
    if not key:
        raise Unauthorized(f"missing API key: {ASK}")
    owner = key_owner(keys, key)
    request.state.api_owner = owner
    note_owner(request.scope, owner)  # the access log names the key's owner
    return Caller(options=f"key:{owner or ''}", jobs=rest_owner(request), owner=owner)


def sent_key(header: str) -> str | None:
    """The key of an Authorization header: Bearer's token, or Basic's password (the whole text without a colon)."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic" and value:
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized(f"the Basic credentials are not base64 of 'user:key'; {ASK}") from None
        user, colon, password = text.partition(":")
        return (password if colon else user) or None
    return None
