"""Answers still being made at the shutdown deadline: ended in OpenAI's shape, not cut.

On SIGTERM uvicorn lets requests in progress run for ``server.shutdown_timeout_s``
(its ``timeout_graceful_shutdown``), then cancels their tasks ("Task cancelled,
timeout graceful shutdown exceeded"). An ASGI task that lets that cancellation out
gets uvicorn's plain-text ``500 Internal Server Error`` (or, once its answer has
begun, a closed connection: a stream with neither an error event nor
``data: [DONE]``) and an ERROR with a traceback in the log, per request.

So a completion route (:class:`gateway.http.hot_routes.Endpoint`) served by the
gateway's own protocol ends such an answer itself, once the cancellation has run
through the pipeline (the request's slot released and its tokens settled, as on
any other exit): a request whose answer has not started gets a 503
(``shutting_down``) with ``connection: close``; a stream gets the error event the
gateway sends when an engine fails mid-stream, then ``data: [DONE]`` and its end.
It is written without waiting for the client to read (the process is exiting:
nothing may hang on a client), one WARNING is logged, and the task forgets the
cancellation and returns, which uvicorn takes as an answer complete.

vLLM's pass-through routes (:mod:`gateway.http.passthrough`) are served by FastAPI's
stack, not as an :class:`~gateway.http.hot_routes.Endpoint`: :class:`CutAtDeadline`
wraps each of them to end its answer the same way (their answers are never streams).

The shutdown's cancellation is told from the others by its connection: uvicorn calls
each connection's ``shutdown`` when the shutdown begins, which marks the answer in
progress (:attr:`gateway.http.direct_cycle.DirectCycle.closing`); the client
leaving is told apart before (:attr:`gateway.http.client_watch.ClientWatch.abandoned`).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ShuttingDownError
from gateway.http.answers import DONE_EVENT, JSON_TYPE, error_event
from gateway.http.direct_cycle import DirectCycle, direct_cycle
from gateway.http.request_id import SCOPE_KEY as REQUEST_ID_KEY

log = logging.getLogger("vgate.shutdown")

CUT_OFF = ShuttingDownError(
    "The gateway is shutting down and this request did not finish in time "
    "(server.shutdown_timeout_s); retry it."
)
_BODY = CUT_OFF.body()
CHAT_EVENTS = error_event(CUT_OFF) + DONE_EVENT
"""How a completion stream ends when cut off (a Responses stream: its own ``error``
event, given by its endpoint)."""


def end_at_deadline(cycle: DirectCycle | None, scope: Scope, events: bytes = CHAT_EVENTS) -> bool:
    """If the running task was cancelled by the shutdown deadline, end its answer (see
    the module's docstring; a stream with ``events``), forget the cancellation and
    return True; else False (the caller lets the cancellation go on)."""
    task = asyncio.current_task()
    if cycle is None or not cycle.closing or task is None or not task.cancelling():
        return False
    started = cycle.response_started
    if cycle.cut_off(CUT_OFF.status, [JSON_TYPE], _BODY, events):
        log.warning(
            "shutdown deadline: %s %s (request %s) cut off %s (server.shutdown_timeout_s)",
            scope["method"],
            scope["path"],
            scope.get(REQUEST_ID_KEY, "-"),
            "mid-stream: ended with an error event" if started else "before its answer: 503",
        )
    task.uncancel()
    return True


class CutAtDeadline:
    """``app`` (a route's ASGI app), whose answer is ended by :func:`end_at_deadline`
    when the shutdown deadline cancels it."""

    __slots__ = ("_app",)

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._app(scope, receive, send)
        except asyncio.CancelledError:
            if not end_at_deadline(direct_cycle(scope), scope):
                raise
