"""One keep-alive HTTP/1.1 connection to an engine: an asyncio protocol over httptools.

httptools (llhttp, already installed for uvicorn) parses the responses; this class
keeps what the lean client needs of one response: its status, its content type,
whether the connection may be reused, and the body as the bytes that arrived, to
be taken whole (an answer) or as they come (a stream). There is one response in
flight per connection at a time, and one reader waiting on it.

Failures are told apart the way the forwarder's failover needs them:

* the connection closed before the response head was complete: nothing came back,
  :class:`EngineUnreachable` (aiohttp's ``ServerDisconnectedError``, as before);
* it closed, or the response could not be parsed, after that: :class:`UpstreamError`;
* it answered something the gateway cannot relay (:class:`UpstreamError` too): an
  upgrade (``101``, never asked for), a redirect (``3xx``: never followed), or a
  body in a content coding other than ``identity`` (requests say ``Accept-Encoding: identity``,
  :mod:`gateway.upstream.target`; relaying gzip bytes as JSON, or caching them,
  would be wrong), or an answer larger than
  :data:`gateway.upstream.transport.MAX_ANSWER_BYTES` (a stream is read as it comes,
  and paused while its reader falls behind, so it needs no such bound).

Interim responses (``1xx`` but ``101``: ``100 Continue``, ``103 Early Hints``) are
skipped: their head is forgotten and the final response read as if it came first.

A wait with a deadline raises :class:`TimeoutError` when it passes; the caller
names the limit. The deadline's timer is armed lazily: a stream pushes its idle
deadline forward at every read, and arming and cancelling a timer for each of
its chunks was most of a chunk's cost here; instead one timer stays armed at the
earliest deadline asked and, when it fires early for the deadline now in force,
is armed again for that one. Reading pauses while more than :data:`HIGH_WATER` bytes wait
for a slow reader (the client of a stream), so TCP pushes back on the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import httptools

from gateway.errors import UpstreamError
from gateway.upstream.transport import (
    CLOSED_MID_ANSWER,
    INVALID_RESPONSE,
    MAX_ANSWER_BYTES,
    EngineUnreachable,
    redirect_refused,
    too_large_answer,
)

log = logging.getLogger("vgate.upstream")
HIGH_WATER = 1 << 20
"""Received bytes not yet taken above which the connection stops reading."""
MAX_HEAD_BYTES = 64 * 1024
"""Most bytes an engine may send before its response head is complete (interim heads
included; checked per read, so up to one read more arrives). httptools grows an
unfinished header value by concatenation: without a bound, an endless head took the
gateway's memory and CPU (quadratic) until the read deadline."""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a response that cannot be relayed
    (the reason is in ``_failure``)."""


class EngineConnection(asyncio.Protocol):
    """A connection the pool hands out for one request at a time."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: tuple[str, str, int],
        on_lost: Callable[[EngineConnection], None],
    ) -> None:
        self.loop = loop
        """The event loop the connection lives on (its deadlines are on its clock)."""
        self.origin = origin
        self._on_lost = on_lost
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        """When the current wait must end (None: it may wait for ever)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._paused = False
        self.closed = False
        self.busy = False
        """A request was sent and its response not yet handed back to the pool."""
        self.idle_since = 0.0
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.content_type = "application/octet-stream"
        """The media type without parameters (what aiohttp called ``content_type``)."""
        self.head_done = False
        self.complete = False
        """The whole response was received."""
        self.keep_alive = False
        self.retry_after: bytes | None = None
        """The response's ``Retry-After``, as sent (an error answer's is relayed)."""
        self.retry_after_ms: bytes | None = None
        """The response's ``retry-after-ms``, likewise."""
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._streaming = False
        """Read as it comes (:meth:`read_some`): the only reader that may fall behind."""
        self._failure: str | None = None
        self._framed = False
        """The response has a Content-Length or a Transfer-Encoding."""
        self._until_close = False
        self._head_bytes = 0
        """Bytes read while the head was not complete (:data:`MAX_HEAD_BYTES`)."""

    # --- used by the client ---------------------------------------------------------

    def send(self, request: bytes) -> None:
        """Write one whole request; the previous response must have been taken."""
        assert self._transport is not None
        self._begin()
        self.busy = True
        self._transport.write(request)

    def open(self) -> bool:
        """Still connected as far as this side knows (the engine has not closed it)."""
        transport = self._transport
        return not self.closed and transport is not None and not transport.is_closing()

    def reusable(self) -> bool:
        """The response was read to its end and both sides keep the connection open."""
        return self.complete and self.keep_alive and not self.closed and self._failure is None

    def close(self) -> None:
        """Close the socket (an abandoned response: the engine sees the disconnect)."""
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True

    async def response_head(self, deadline: float | None) -> None:
        """Wait until the status line and headers are in."""
        while not self.head_done:
            self._raise_if_broken()
            await self._wait(deadline)

    async def body(self, deadline: float | None) -> bytes:
        """The whole body, once it has arrived (the head too, if not awaited before)."""
        while not self.complete:
            self._raise_if_broken()
            await self._wait(deadline)
        return self._take()

    async def read_some(self, deadline: float | None) -> bytes:
        """The body bytes received since the last call (waiting for some); ``b""`` at
        the end of the body. While more than :data:`HIGH_WATER` bytes wait for this
        reader, the connection stops reading."""
        self._streaming = True
        while not self._chunks:
            if self.complete:
                return b""
            self._raise_if_broken()
            await self._wait(deadline)
        return self._take()

    def _raise_if_broken(self) -> None:
        failure = self._failure
        if failure is not None:  # the parser's failure in the aiohttp client's words
            told = (
                INVALID_RESPONSE
                if failure == _PARSE_FAILURE
                else f"engine answered badly: {failure}"
            )
            raise UpstreamError(told)
        if self.closed:
            if not self.head_done:
                raise EngineUnreachable("the engine closed the connection before answering")
            raise UpstreamError(CLOSED_MID_ANSWER)

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def _wait(self, deadline: float | None) -> None:
        self._deadline = deadline
        if deadline is not None:
            timer = self._timer
            if timer is None or self._timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(deadline, self._on_timer)
                self._timer_at = deadline
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        """The timer of the earliest deadline asked: expire the wait if its own deadline
        has passed, else wait on for it (a later deadline; none: nobody is waiting)."""
        self._timer = None
        deadline, waiter = self._deadline, self._waiter
        if deadline is None or waiter is None or waiter.done():
            return
        if self.loop.time() >= deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes nobody asked for: the connection cannot be trusted
            self._failure = "data outside a response"
            self.close()
            return
        if not self.head_done:
            if self._head_bytes > MAX_HEAD_BYTES:
                self._failure = f"a response head over {MAX_HEAD_BYTES} bytes"
                self.close()
                self._wake()
                return
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._failure is None:  # (else a callback refused the response: _Refused)
                self._failure = _PARSE_FAILURE  # the parser's words: logged
                log.warning("engine %s:%d sent an invalid HTTP response: %s: %s",
                            self.origin[1], self.origin[2], type(exc).__name__, exc)  # fmt: skip
            self.close()
        if self._streaming and self._buffered > HIGH_WATER and not self._paused and not self.closed:
            self._paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed engine sends nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self.head_done and not self.complete and self._until_close and not self._failure:
            self.complete = True  # a body without length or chunks ends with the connection
        self._wake()
        self._on_lost(self)

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the read that ended this one
            self._refuse("data after the response")  # the answer stands; not reused

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value.decode("latin-1").partition(";")[0].strip().lower()
        elif lowered == b"content-length" or lowered == b"transfer-encoding":
            self._framed = True
        elif lowered == b"content-encoding" and value.strip().lower() not in _IDENTITY:
            coding = value.decode("latin-1")[:40]
            self._refuse(f"a body in content coding {coding!r}, not the identity asked for")
        elif lowered == b"retry-after":
            self.retry_after = value
        elif lowered == b"retry-after-ms":
            self.retry_after_ms = value

    def on_headers_complete(self) -> None:
        status = self.status = self._parser.get_status_code()
        if status < 200:
            self._interim(status)
            return
        if status > 599:  # no such status: nothing to relay it as
            self._refuse(f"HTTP status {status}")
        if 300 <= status < 400:
            self._refuse(redirect_refused(status))
        self.keep_alive = self._parser.should_keep_alive()
        self._until_close = not self._framed and status != 204 and status != 304
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > MAX_ANSWER_BYTES and not self._streaming:
            self._refuse(too_large_answer())  # an answer is held whole: bounded

    def on_message_complete(self) -> None:
        if not self.head_done:  # an interim response ended: the final one comes next
            return
        self.complete = True
        self._stop_timer()  # nothing more to wait for: an idle connection holds no timer

    def _interim(self, status: int) -> None:
        """A ``1xx`` head: forget it (a ``101`` upgrade, or a status below 100, is an
        error); the final response follows on the same connection."""
        if status == 101 or status < 100:
            self._refuse(f"HTTP {status} instead of an answer")
        self.status = 0
        self.content_type = "application/octet-stream"
        self.retry_after = self.retry_after_ms = None
        self._framed = False

    def _refuse(self, why: str) -> None:
        self._failure = why  # "engine answered badly: <why>" (:meth:`_raise_if_broken`)
        raise _Refused(why)


_PARSE_FAILURE = "an invalid HTTP response"
"""``_failure`` when the parser refused the bytes (told as ``INVALID_RESPONSE``)."""
_IDENTITY = (b"identity", b"")
"""``Content-Encoding`` values of a body as it is (no coding)."""
