"""Routing evidence on demand: why a request went where it went.

A request whose ``x-vgate-explain`` header carries the admin key (``auth.admin_key``,
compared in constant time), or that sends ``x-vgate-explain: 1`` with the admin key as
its own bearer (the operator's own request, served as ``OPERATOR`` of
:mod:`gateway.auth.authenticator`: every model, no limits), gets the evidence: as an
``x-vgate-explain`` response header (JSON answers, cache hits and errors) or as a
trailing SSE comment line
``: vgate-explain {...}`` after a stream's last event (a stream's head leaves before
its engine is done). In the first form the admin key travels in its own header and
``Authorization`` still carries the client's key: the request is served and charged
as that key's, and only the operator who knows the admin key sees the evidence. Any
other value, or no admin key configured, changes nothing and tells nothing: no error,
no header.

The evidence is one JSON object, ASCII only (``\\uXXXX`` escapes) and at most
:data:`MAX_BYTES`: ``policy``, ``affinity``, ``candidates`` (each engine's id, health
and load when the first choice was made; the list is cut to fit), ``attempts``
(engine, status, failure), ``cache``, ``limits`` (the limiter's remaining budget),
``rollout``/``variant``, and ``timings_ms``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from gateway.auth.bearer import bearer_token
from gateway.observability.timeline import Timeline

EXPLAIN_HEADER = b"x-vgate-explain"
MAX_BYTES = 4096
_CANDIDATES_KEPT = (16, 4, 0)


class ExplainGate:
    """Whether a request's ``x-vgate-explain`` value is the admin key."""

    __slots__ = ("_key",)

    def __init__(self, admin_key: str | None) -> None:
        self._key = admin_key.encode() if admin_key else None

    def bearer(self, explain: str | None, authorization: str | None) -> str | None:
        """The admin key, when the request asks ``x-vgate-explain: 1`` (or ``true``) and
        authenticates with the admin key itself (``Authorization: Bearer <admin key>``):
        the operator's own request. None otherwise."""
        if explain is None or explain.strip().lower() not in ("1", "true"):
            return None
        token = bearer_token(authorization)
        if token is None or not self.admits(token):
            return None
        return token

    def admits(self, presented: str | None) -> bool:
        if presented is None or self._key is None:
            return False
        try:
            given = presented.encode("latin-1")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, self._key)


class Evidence:
    """What the pipeline noted while deciding; plain values (see the module docstring)."""

    __slots__ = ("affinity", "cache", "candidates", "limits", "policy", "rollout", "variant")

    def __init__(self) -> None:
        self.policy: str | None = None
        self.affinity: dict[str, Any] | None = None
        self.candidates: list[dict[str, Any]] = []
        self.cache: dict[str, Any] = {"status": "off"}
        self.limits: dict[str, str] = {}
        self.rollout: str | None = None
        self.variant: str | None = None

    def render(self, timeline: Timeline) -> bytes:
        """The evidence as bounded ASCII JSON (candidates cut first, then dropped)."""
        attempts = [
            {"engine": a.engine, "status": a.status, "failure": a.failure}
            for a in timeline.attempts or ()
        ][:8]
        for kept in _CANDIDATES_KEPT:
            body: dict[str, Any] = {
                "policy": self.policy,
                "affinity": self.affinity,
                "candidates": self.candidates[:kept],
                "attempts": attempts,
                "cache": self.cache,
                "limits": self.limits,
                "rollout": self.rollout,
                "variant": self.variant,
                "timings_ms": timeline.durations_ms(),
            }
            if len(self.candidates) > kept:
                body["candidates_omitted"] = len(self.candidates) - kept
            text = json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=str)
            if len(text) <= MAX_BYTES:
                return text.encode("ascii")
        return b'{"truncated":true}'

    def trailer(self, timeline: Timeline) -> bytes:
        """The SSE comment that ends a stream with the evidence."""
        return b": vgate-explain " + self.render(timeline) + b"\n\n"
