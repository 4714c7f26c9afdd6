"""API-key authentication: ``Authorization: Bearer <key>`` → :class:`Principal`.

Keys are held only as SHA-256 digests. A presented key is hashed and looked up
by digest, so the time a lookup takes depends on the digest, which tells an
attacker nothing about any stored secret; the final comparison is
``hmac.compare_digest``. Keys never reach logs or metrics: principals carry the
key's *name*.

With auth disabled, :class:`OpenAccess` admits everyone as ``anonymous``, so the
pipeline has no ``if auth_enabled`` branches.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import AuthenticationError
from gateway.settings import AuthSettings, StaticKey

_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's name and the models it may use (``None``: all)."""

    name: str
    models: frozenset[str] | None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal("anonymous", None)


class Authenticator(Protocol):
    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``Authorization`` header; raises AuthenticationError."""
        ...


class OpenAccess:
    """Auth switched off: every caller is ``anonymous`` and may use every model."""

    def authenticate(self, authorization: str | None) -> Principal:
        return ANONYMOUS


class StaticKeys:
    """Keys declared in the config file (stateless deployments)."""

    def __init__(self, keys: Iterable[StaticKey]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        for key in keys:
            digest = _digest(key.key)
            models = frozenset(key.models) if key.models else None
            self._by_digest[digest] = (digest, Principal(key.name, models))

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="invalid_api_key"
            )
        if authorization[: len(_BEARER)].lower() != _BEARER:
            raise AuthenticationError(
                "The Authorization header must be 'Bearer <key>'.", code="invalid_api_key"
            )
        digest = _digest(authorization[len(_BEARER) :].strip())
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return found[1]


def build_authenticator(settings: AuthSettings) -> Authenticator:
    return StaticKeys(settings.keys) if settings.enabled else OpenAccess()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()
