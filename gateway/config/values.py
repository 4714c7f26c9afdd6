"""Checks of single config values that need more than a pattern: what
:mod:`gateway.config.sections` validates fields with. Each raises ValueError with a
message that never repeats the value (a secret, a URL with a password)."""

from __future__ import annotations

from urllib.parse import urlsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url(value: str | None) -> str | None:
    """``value`` if the Redis client can read it as a URL (``redis://``, ``rediss://``,
    ``unix://``, a port in range); a ValueError that never repeats the URL (it may hold
    a password) otherwise. Unchecked, a bad port stopped the gateway's start-up with a
    traceback from inside the client."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - read for its check: ValueError when out of range
    except ValueError:
        raise ValueError("not a Redis URL (its port or address is malformed)") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix://")
    database = parts.path.removeprefix("/")
    if parts.scheme != "unix" and database and not (database.isascii() and database.isdigit()):
        # The client reads a path that is not a number as no database at all: DB 0,
        # silently (another deployment's keys, limits and cache, or a typo unnoticed);
        # '²' is a digit to str.isdigit, not to int().
        raise ValueError("a Redis URL's path is its database number (redis://host:6379/0)")
    return value


def sendable_secret(value: str, what: str) -> str:
    """``value`` if a client can send it as ``Bearer <value>``: visible ASCII, no space
    (header values arrive trimmed, as latin-1); anything else could never match, and
    is most often a newline or space read along with the secret from a file."""
    if not all("!" <= char <= "~" for char in value):
        raise ValueError(
            f"{what}: only visible ASCII characters, no spaces (a Bearer token cannot carry "
            "others): a trailing newline or space read from a secret file?"
        )
    return value
