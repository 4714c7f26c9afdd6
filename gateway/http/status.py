"""``/status`` (the live status page) and ``/status/events`` (its server-sent events).

Where they are served follows the other operator routes
(:mod:`gateway.http.operator`): on the operator listener, like ``/metrics`` (behind
``server.operator_token`` when one is set); without one, on the public port behind
the admin key (``Authorization:
Bearer``; the page's ``EventSource`` sends whatever the browser sends, so a proxy
that adds the header serves both). A key never travels in a URL.

The event stream sends one snapshot (:class:`~gateway.http.status_feed.StatusFeed`)
a second. A page that reads slowly costs no memory beyond what the connection
buffers: a frame is only sent once the previous one left (frames in between are
skipped, not queued), a stream that cannot send for :data:`SEND_TIMEOUT_S` ends,
and at most :data:`~gateway.http.status_feed.MAX_STREAMS` are open per worker
(beyond: 503). A stream ends after :data:`STREAM_LIFETIME_S` so that a gateway
shutting down never waits long on one; the page's ``EventSource`` reconnects
after the ``retry`` the stream sets.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import OverloadedError, retry_after
from gateway.http.context import app_state
from gateway.http.status_feed import StatusFeed

INTERVAL_S = 1.0
"""Between two snapshots of one stream."""
SEND_TIMEOUT_S = 10.0
"""A frame the client has not taken within this long ends its stream."""
STREAM_LIFETIME_S = 20.0
"""A stream ends after this long; the page reconnects at once."""
_RETRY = b"retry: 250\n\n"
_NO_STORE = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


async def page(request: Request) -> Response:
    """The status page: one HTML file, uPlot inlined, no request to anywhere else."""
    status_page = app_state(request).status.page
    headers = {
        **_NO_STORE,
        "content-security-policy": status_page.csp,
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
    }
    return Response(status_page.body, media_type="text/html; charset=utf-8", headers=headers)


async def events(request: Request) -> Response:
    """The page's live feed (``text/event-stream``), or 503 when too many are open.

    ``HEAD`` (which every ``GET`` route answers) gets the head alone and holds no
    place: it used to hold one for the stream's whole lifetime, sending nothing, so
    a handful of ``HEAD`` requests kept every page out."""
    if request.method == "HEAD":
        return Response(headers={"content-type": "text/event-stream", "cache-control": "no-store"})
    feed = app_state(request).status
    if not feed.open_stream():
        raise OverloadedError(
            "Too many status pages are open on this gateway process; retry shortly.",
            code="too_many_status_streams",
            headers=retry_after(5),
        )
    return StatusStream(feed)


class StatusStream(Response):
    """Snapshots as server-sent events until the client leaves, stalls or the stream's
    lifetime ends; it gives its place back to the feed however it ends."""

    def __init__(
        self,
        feed: StatusFeed,
        interval_s: float = INTERVAL_S,
        lifetime_s: float = STREAM_LIFETIME_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self._feed = feed
        self._interval_s = interval_s
        self._lifetime_s = lifetime_s
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        left = asyncio.ensure_future(_disconnected(receive))
        try:
            await self._stream(send, left)
        finally:
            left.cancel()
            self._feed.close_stream()

    async def _stream(self, send: Send, left: asyncio.Future[None]) -> None:
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # proxies must pass events on as they come
        ]
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._lifetime_s
        if not await self._send(send, {"type": "http.response.start", "status": 200,
                                       "headers": headers}):  # fmt: skip
            return
        body = _RETRY + self._feed.frame()
        while True:
            if not await self._send(send, _chunk(body, more=True)):
                return  # stalled: uvicorn closes the connection
            remaining = ends_at - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait((left,), timeout=min(self._interval_s, remaining))
            if left.done():
                return  # the client left
            body = self._feed.frame()
        await self._send(send, _chunk(b"", more=False))

    async def _send(self, send: Send, message: Message) -> bool:
        """Send ``message``; False when the client did not take it in time."""
        try:
            await asyncio.wait_for(send(message), self._send_timeout_s)
        except TimeoutError:
            return False
        except OSError:  # the connection broke under the write
            return False
        return True


def _chunk(body: bytes, more: bool) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (the request has no body to read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
