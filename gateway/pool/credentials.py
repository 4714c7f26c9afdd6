"""The Bearer key each engine demands, by engine URL: the one place requests get it.

Keys come from the config (``models[].api_key`` / ``api_key_env``, for every engine
of that model) and, for managed engines vgate started with a key of its own making,
from their registry records. :class:`gateway.pool.sources.RegistryWatcher` keeps this
map current; the forwarder, the health probe, the load scraper and every route that
forwards to engines read it through :meth:`EngineCredentials.headers`. A client's own
``Authorization`` is never forwarded: engine requests are built from scratch.

Keys are secrets: this object's ``repr`` shows how many it holds, never one.
"""

from __future__ import annotations

from collections.abc import Mapping


class EngineCredentials:
    """Engine URL → the key to send it (absent: send none)."""

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self._headers: dict[str, dict[str, str]] = {}
        self.secrets: tuple[str, ...] = ()
        """Every key held (once each): never shown in an engine's error text that is
        relayed to a client (:func:`gateway.errors.engine_internals.without_secrets`)."""
        self.replace(keys or {})

    def replace(self, keys: Mapping[str, str]) -> None:
        """Make ``keys`` (URL → key) the whole map: engines not in it get no key."""
        self._headers = {url: {"Authorization": f"Bearer {key}"} for url, key in keys.items()}
        self.secrets = tuple(key for key in dict.fromkeys(keys.values()) if key)

    def headers(self, url: str, base: Mapping[str, str] | None = None) -> Mapping[str, str]:
        """``base`` plus the engine's ``Authorization`` (``base`` itself when it has none,
        without copying: most requests of an unkeyed deployment pay nothing)."""
        auth = self._headers.get(url)
        if auth is None:
            return base if base is not None else {}
        return {**base, **auth} if base else auth

    def __contains__(self, url: object) -> bool:
        return url in self._headers

    def __repr__(self) -> str:
        return f"EngineCredentials({len(self._headers)} engine keys)"
