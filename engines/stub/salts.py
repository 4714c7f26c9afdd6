"""vLLM's check of a request's ``cache_salt`` (its prefix-cache salt), which the stub
makes as vLLM does: absent or null, or a non-empty string of at most 128 characters
without ``@``, ``/``, ``\\`` or NUL; a 400 naming ``cache_salt`` otherwise. The salt
reaches the stub's ``last_request`` like any other field, so tests see what arrived."""

from __future__ import annotations

from typing import Any

from engines.stub.plan import RequestError

MAX_LENGTH = 128
_FORBIDDEN = frozenset("@/\\\x00")


def check_cache_salt(body: dict[str, Any]) -> None:
    """Raise vLLM's :class:`RequestError` for a ``cache_salt`` it would refuse."""
    salt = body.get("cache_salt")
    if salt is None:
        return
    if not isinstance(salt, str) or not salt:
        raise RequestError(
            400, "Parameter 'cache_salt' must be a non-empty string if provided.",
            param="cache_salt",
        )  # fmt: skip
    if len(salt) > MAX_LENGTH or any(char in _FORBIDDEN for char in salt):
        raise RequestError(
            400,
            "Parameter 'cache_salt' must be at most 128 characters and must not contain "
            "'@', '/', '\\\\', or NUL.",
            param="cache_salt",
        )
