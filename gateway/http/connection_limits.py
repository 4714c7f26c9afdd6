"""The ``server.*`` limits each connection works under (enforced by
:class:`gateway.http.connections.LimitedHttpToolsProtocol`, which re-exports this)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.sections import ServerSettings


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The ``server.*`` limits one connection works under."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(
            server.max_header_bytes,
            server.header_timeout_s,
            server.body_timeout_s,
            server.send_timeout_s,
            server.max_connections,
        )
