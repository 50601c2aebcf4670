"""Joining a Ray cluster that has token authentication on (Ray 2.60+): whether this machine has a
token at hand, and what to tell a user whose connection failed. Never imports Ray or torch."""

from __future__ import annotations

from pathlib import Path

AUTH_HINT = ("If the cluster uses token authentication (Ray 2.60+ turns it on for `ray start --head` when "
             "~/.ray/auth_token exists), give this machine its token: RAY_AUTH_TOKEN=<token>, or the token "
             "in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH); the studio then sets RAY_AUTH_MODE=token.")


def token_auth_for(address: str, environ) -> bool:
    """Whether joining the cluster at ``address`` should use token authentication: a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` does
    not say otherwise. Ray itself enables it only for a local cluster it finds, not an explicit address."""
    if environ.get("RAY_AUTH_MODE"):
        return environ["RAY_AUTH_MODE"].lower() == "token"
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    token_file = Path(environ.get("RAY_AUTH_TOKEN_PATH") or home / ".ray" / "auth_token")
    return token_file.is_file() and token_file.stat().st_size > 0
