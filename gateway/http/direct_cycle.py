"""The completion routes' answers written straight to the connection, not as ASGI messages.

Through ASGI, every answer is two or more message dicts, each checked again by
uvicorn's ``RequestResponseCycle.send`` (message type, every header name and
value against a regular expression, ``content-length`` parsed back from its
bytes, chunk framing decided per message), and then by :mod:`one_write`'s
transport stand-ins that put the head and body in one write. The completion
routes build their headers themselves and know, before they write anything,
whether the answer is whole (``content-length``) or a stream (chunked). So
:class:`DirectCycle` gives them a :class:`gateway.http.answers.Responder` that
writes exactly that: a whole answer as one ``transport.write`` of head and body,
a stream as its head, then one write per run of events.

It is uvicorn's cycle for the same request (``cycle.__class__``, as
:class:`OneWriteCycle`), so it keeps uvicorn's state exact: ``response_started``
and ``response_complete``, ``connection: close`` when the connection will not be
kept alive (and the close itself), flow control (a write waits while the client
is not reading), a client gone (writes are dropped), and ``on_response`` (the
next pipelined request, the keep-alive timer). The ``date`` header uvicorn adds
to every answer comes from its ``default_headers`` as before, and
``x-request-id`` (:mod:`gateway.http.request_id`) from the scope.

Only :class:`gateway.http.connections.LimitedHttpToolsProtocol` makes these
cycles; a completion route served any other way (an in-process ASGI client in
tests) finds no :data:`SCOPE_KEY` in its scope and sends ASGI messages.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE

from gateway.http.one_write import OneWriteCycle
from gateway.http.request_id import HEADER as REQUEST_ID_HEADER
from gateway.http.request_id import SCOPE_KEY as REQUEST_ID_KEY
from gateway.http.send_deadline import reset
from gateway.pipeline.results import RawHeaders

SCOPE_KEY = "vgate.cycle"
"""A weak reference to the request's :class:`DirectCycle` (weak: the cycle holds the
scope, and a strong one back would leave every request's objects to the cyclic GC)."""

_CLOSE = b"connection: close\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class DirectCycle(OneWriteCycle):
    """uvicorn's cycle with the :class:`gateway.http.answers.Responder` methods."""

    loop: asyncio.AbstractEventLoop
    """The connection's event loop (set by :meth:`attach`)."""
    on_disconnect: Callable[[], None] | None = None
    """Called once if the connection is lost before the answer is complete (set by
    :class:`gateway.http.client_watch.ClientWatch`; a class default, since the cycle
    is made by uvicorn and only then given this class)."""
    closing = False
    """uvicorn's graceful shutdown began while this answer was being made (set by the
    connection): a cancellation not caused by the client is then the shutdown deadline
    (:mod:`gateway.http.shutdown_cut`)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Offer this cycle to the application, through the scope; ``loop`` is the
        connection's."""
        self.loop = loop
        self.scope[SCOPE_KEY] = weakref.ref(self)  # type: ignore[literal-required]

    async def whole(self, status: int, headers: RawHeaders, body: bytes) -> None:
        """A complete answer with ``content-length``, head and body in one write."""
        if not await self._may_write():
            return
        head = self._head(status, headers)
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        head.append(body)
        self.transport.write(b"".join(head))
        self._complete()

    async def begin(self, status: int, headers: RawHeaders) -> None:
        """A stream's head (chunked): written at once, before its first event. An
        HTTP/1.0 client knows no chunked encoding (RFC 9112 6.1): its stream is the
        bare events, ended by closing the connection."""
        if not await self._may_write():
            return
        unchunked = self.scope["http_version"] == "1.0"
        if unchunked:
            self.keep_alive = False  # the close ends the body: "connection: close"
        head = self._head(status, headers)
        if not unchunked:
            head.append(_CHUNKED)
        head.append(b"\r\n")
        self.chunked_encoding = not unchunked
        self.transport.write(b"".join(head))

    async def part(self, body: bytes) -> None:
        """One run of a stream's events, as one chunk. (:meth:`_may_write` inlined: this
        runs for every run of events of every stream.)"""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if body and not self.disconnected and not self.response_complete:
            if self.chunked_encoding:
                self.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
            else:
                self.transport.write(body)

    async def end(self) -> None:
        """The stream's end (the last, empty chunk; for HTTP/1.0, the close)."""
        if await self._may_write():
            if self.chunked_encoding:
                self.transport.write(_LAST_CHUNK)
            self._complete()

    def hang_up(self) -> None:
        """Reset the connection now if its client is taking no bytes (writing is paused:
        its buffers are full), dropping what was buffered for it; the request then sees
        a disconnect. A client that is reading gets the rest as usual."""
        if self.flow.write_paused and not self.disconnected and not self.response_complete:
            reset(self.transport)

    def cut_off(self, status: int, headers: RawHeaders, body: bytes, events: bytes) -> bool:
        """End the answer now and close, without waiting for the client to read (the
        process is exiting): ``status``, ``headers`` and ``body`` as a whole answer if
        none has started, else ``events`` as the stream's last run and its end. False
        when there is nothing to end (the client gone, the answer complete)."""
        if self.disconnected or self.response_complete:
            return False
        self.keep_alive = False  # "connection: close", and the close once written
        if not self.response_started:
            head = self._head(status, headers)
            head.append(b"content-length: %d\r\n\r\n" % len(body))
            head.append(body)
            self.transport.write(b"".join(head))
        elif self.chunked_encoding:
            self.transport.write(b"%x\r\n%b\r\n%b" % (len(events), events, _LAST_CHUNK))
        else:
            self.transport.write(events)
        self._complete()
        return True

    async def _may_write(self) -> bool:
        """Wait while the client is not reading; False once it is gone (or the answer
        is complete), when writes are dropped as uvicorn drops them."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        return not self.disconnected and not self.response_complete

    def _head(self, status: int, headers: RawHeaders) -> list[bytes]:
        """The status line and headers, without the blank line that ends them."""
        if self.response_started:
            raise RuntimeError("the answer has already started")
        self.response_started = True
        if self.waiting_for_100_continue and self.more_body:
            self.keep_alive = False  # its body never asked for: see OneWriteCycle._send_start
        self.waiting_for_100_continue = False
        # uvicorn's check of every value (no header injection), as one search over them
        # all: a character it refuses is found wherever it is.
        if HEADER_VALUE_RE.search(b"".join([value for _, value in headers])):
            raise RuntimeError("invalid value in the answer's headers")
        head = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            head += (name, b": ", value, b"\r\n")
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        request_id: str | None = self.scope.get(REQUEST_ID_KEY)  # type: ignore[assignment]
        if request_id is not None:
            head += (REQUEST_ID_HEADER, b": ", request_id.encode(), b"\r\n")
        if not self.keep_alive:
            head.append(_CLOSE)
        return head

    def _complete(self) -> None:
        """What uvicorn does once an answer's last byte is written."""
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


def direct_cycle(scope: Scope) -> DirectCycle | None:
    """The request's :class:`DirectCycle`, if it was served by the gateway's protocol."""
    ref = scope.get(SCOPE_KEY)
    cycle: DirectCycle | None = None if ref is None else ref()
    return cycle
