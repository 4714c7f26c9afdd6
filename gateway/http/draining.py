"""The public server, which tells the app when its graceful shutdown (the drain) begins.

On SIGTERM uvicorn stops accepting, then lets the requests in progress run for up to
``server.shutdown_timeout_s``, and only then runs the app's lifespan exit. The app
learns nothing of the drain before that exit on its own, so the operator listener
(stopped by that exit) kept answering ``/ready`` with 200 all through it, and an
orchestrator kept sending clients to a gateway on its way out.

:class:`DrainingServer` calls ``on_drain`` the moment its shutdown begins, before it
stops accepting; :func:`readiness_drain` is the gateway's: readiness turns to 503
``{"status": "draining"}`` for good (:meth:`gateway.pool.readiness.Readiness.begin_drain`),
``/health`` (liveness) stays 200. It costs nothing per request: one call per process.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger("vgate.shutdown")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that calls ``on_drain()`` once, when its shutdown begins."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            self._on_drain()
        except Exception:  # the drain itself must go on
            log.exception("shutdown: marking the drain failed")
        await super().shutdown(sockets)


def readiness_drain(app: Starlette) -> Callable[[], None]:
    """The drain hook of a gateway app: its readiness says "draining" from then on."""

    def begin() -> None:
        state = getattr(app.state, "vgate", None)  # absent when its start-up failed
        if state is not None:
            state.readiness.begin_drain()
            log.info("draining: /ready answers 503 until the process exits")

    return begin
