"""The completion routes served straight from the ASGI scope, ahead of FastAPI's stack.

FastAPI wraps every route in about fifteen layers of middleware and routing
(error middleware, telemetry, body limits, exception handlers, an exit stack,
router and sub-router dispatch, ...). Each is a coroutine frame, and each time a
request waits (for Redis, for the engine) and resumes, Python walks back through
every one of them. The completion routes need none of it: they read their body
within the size limit themselves and turn every failure into an OpenAI error. So
:class:`HotRoutes` hands ``POST`` on those paths straight to their
:class:`Endpoint` and every other request, including other methods on the same
paths, to FastAPI unchanged.

An :class:`Endpoint` is a plain ASGI app: no Starlette ``Request`` or ``Response``
is made. Its handler reads what it needs from the scope and ``receive``, and
returns the pipeline's result, which :mod:`gateway.http.answers` writes: straight
to the connection when the gateway's own protocol serves it
(:mod:`gateway.http.direct_cycle`), else as ASGI messages. It does what the
skipped layers would have done: a :class:`GatewayError` becomes its JSON error
and an unexpected exception a logged 500, both in OpenAI's format. (The same
endpoints also sit in FastAPI's router, which answers 405 for other methods on
their paths.)

Both sit inside :class:`gateway.http.request_id.RequestIdMiddleware`, so answers
still carry ``x-request-id`` (a direct answer takes it from the scope).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from fastapi import APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.http.answers import (
    AsgiResponder,
    Responder,
    respond,
    respond_error,
    respond_internal_error,
)
from gateway.http.client_watch import ClientWatch
from gateway.http.direct_cycle import direct_cycle
from gateway.http.shutdown_cut import CHAT_EVENTS, CUT_OFF, end_at_deadline
from gateway.pipeline.results import EventStream, Result

log = logging.getLogger("vgate.app")

Handler = Callable[[Scope, Receive, ClientWatch], Awaitable[Result]]
"""Answers one request: reads its headers from the scope and its body from
``receive``, then starts the :class:`ClientWatch` (the body read whole) and
returns the pipeline's result; refuses by raising :class:`GatewayError`."""


class Endpoint:
    """One route's handler as an ASGI app that sends its result or its error.

    A client that hangs up while the answer is being made or streamed cancels
    it (see :mod:`gateway.http.client_watch`); nothing is sent then, since nobody
    is left to receive it. The shutdown deadline cancels it too; its answer is then
    ended with a ``shutting_down`` error (:mod:`gateway.http.shutdown_cut`)."""

    __slots__ = ("_handler", "_route_cut_events")

    def __init__(self, handler: Handler, cut_events: bytes = CHAT_EVENTS) -> None:
        self._handler = handler
        self._route_cut_events = cut_events
        """How a stream of this route ends when the shutdown deadline cuts it off (unless
        the stream itself says: :attr:`EventStream.cut_event`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = direct_cycle(scope)
        watch = ClientWatch(receive, cycle)
        responder: Responder = AsgiResponder(send) if cycle is None else cycle
        result: Result | None = None
        try:
            try:
                result = await self._handler(scope, receive, watch)
            except GatewayError as exc:
                await respond_error(exc, responder)
                return
            except Exception:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                await respond_internal_error(responder)
                return
            await respond(result, responder)
        except asyncio.CancelledError:
            if watch.abandoned:
                watch.swallow()
            elif not end_at_deadline(cycle, scope, self._cut_events(result)):  # answered
                raise
        finally:
            watch.stop()

    def _cut_events(self, result: Result | None) -> bytes:
        if isinstance(result, EventStream) and result.cut_event is not None:
            return result.cut_event(CUT_OFF)
        return self._route_cut_events


class HotRoutes:
    """``POST`` on the paths in ``routes`` goes to its endpoint; anything else to ``app``."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, ASGIApp]) -> None:
        self._app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        await endpoint(scope, receive, send)


def add_endpoint(router: APIRouter, path: str, endpoint: Endpoint) -> None:
    """``POST`` on ``path`` served by ``endpoint`` (Starlette serves an ASGI app given as
    a route's endpoint as it is; its type hints only admit request handlers)."""
    router.add_route(path, cast(Any, endpoint), methods=["POST"])
