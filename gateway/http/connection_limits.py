"""The ``server.*`` limits each connection works under (enforced by
:class:`gateway.http.connections.LimitedHttpToolsProtocol`, which re-exports this)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from gateway.config.sections import ServerSettings

log = logging.getLogger("vgate.connections")

OVER_CAP_RELOG_S = 60.0


class OverCapLog:
    """The warning that new connections get 503 over ``server.max_connections``: at the
    first crossing of the cap, then at most once per :data:`OVER_CAP_RELOG_S` with how
    many crossings there were since. Logged at every crossing, a client keeping the
    worker at its cap (one connection closed, one more opened) wrote a line each time."""

    __slots__ = ("_last", "_since")

    def __init__(self) -> None:
        self._last = -math.inf
        self._since = 0

    def crossed(self, now: float) -> None:
        if now - self._last < OVER_CAP_RELOG_S:
            self._since += 1
            return
        more = f" ({self._since} more crossings since)" if self._since else ""
        log.warning("over server.max_connections: new connections get 503%s", more)
        self._last, self._since = now, 0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The ``server.*`` limits one connection works under."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int
    over_cap: OverCapLog = field(default_factory=OverCapLog, compare=False)

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(
            server.max_header_bytes,
            server.header_timeout_s,
            server.body_timeout_s,
            server.send_timeout_s,
            server.max_connections,
        )
