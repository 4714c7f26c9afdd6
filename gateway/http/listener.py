"""The operator listener: a second, small HTTP server inside the gateway process.

It serves the operator app (:func:`gateway.http.operator.operator_router`) on
``server.admin_host:server.admin_port`` and shares everything with the public
app, since both run on the same event loop over the same state. The gateway's
lifespan starts it after the shared objects exist and stops it before they are
closed.

Every worker process binds the port itself with ``SO_REUSEPORT``, so
``server.workers > 1`` works: the kernel spreads operator connections over the
workers, as it does public ones. Each worker keeps its own metrics, so one
scrape sees one worker (as on the public port).

uvicorn's :class:`~uvicorn.Server` installs its own SIGINT/SIGTERM handlers
while it serves; the public server owns those, so this one runs with signal
capture switched off and stops when :meth:`OperatorListener.stop` is called.
It leaves logging alone too (``log_config=None``): the public server has set it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from gateway.http.connections import ConnectionLimits, limited_protocol

log = logging.getLogger("vgate.app")

_GRACEFUL_SHUTDOWN_S = 5


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process's main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OperatorListener:
    """``app`` served on ``host:port`` until :meth:`stop`."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        log_level: str,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._host = host
        self._port = port
        config = uvicorn.Config(
            app,
            # the public port's connection limits (head size, deadlines, cap) here too
            http=limited_protocol(limits) if limits is not None else "auto",
            lifespan="off",
            log_config=None,
            log_level=log_level,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        )
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the port (an OSError, e.g. the port is taken, fails the start) and serve."""
        sock = bind_reusable(self._host, self._port)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        log.info("vgate operator listener on http://%s:%d", self._host, self._port)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (at most a few seconds), return."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task


def bind_reusable(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other processes may bind as well
    (``SO_REUSEPORT``: every gateway worker binds its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def taken(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already: a bind without
    ``SO_REUSEPORT`` fails even where every listener has it, so another gateway's
    operator listener is found before this one's workers would share its port (the
    kernel would then split ``/ready``, ``/metrics`` and ``/admin`` between the two)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (TIME_WAIT is fine)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
