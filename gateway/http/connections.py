"""Connection limits: what a client can hold open before its request is handled.

uvicorn's httptools protocol parses fast (llhttp, in C) but limits nothing before
the application runs. It accepts a request head of any size (httptools keeps an
unfinished header value in memory: 16 MiB per connection was measured, issue #14).
It waits forever for a head or a body that trickles in, or for a first request
that never comes. Its ``limit_concurrency`` answers in plain text. h11, uvicorn's
other protocol, caps the head but parses in Python, several times slower per
request. So the gateway runs httptools' protocol with these limits added
(``server.*`` settings):

- **head size** (``max_header_bytes``): the request line and headers. Past it,
  the connection gets a 431 and is closed. Bytes are counted as they arrive,
  so an unfinished head never grows beyond the limit (plus, when pipelined
  requests share a socket read, that read: uvloop reads up to 250 KB).
- **head deadline** (``header_timeout_s``): a head must be complete this long
  after its first byte, or after the connection opened for its first request.
  A partly sent head gets a 408; an idle new connection is closed without one.
- **trailers** (the header fields a chunked body may end with): counted against
  ``max_header_bytes`` too. In a chunked body, bytes the parser takes without
  producing any body or chunk (a trailer, or a chunk-size line, being sent) are
  counted from the last that did; past the limit the connection is closed, with
  a 431 if the application has not answered yet. Without this a client could
  send an endless trailer to any route, keys or no keys: httptools grows the
  value in memory (and copies it on every read) until the body deadline.
- **body deadline** (``body_timeout_s``): the body must be complete this long
  after the head. Time when the gateway itself stopped reading (flow control,
  pipelining) is not held against the client. Past it the connection is closed
  and the application sees a disconnect.
- **send deadline** (``send_timeout_s``): a client that takes no bytes of its
  answer for this long is reset (:mod:`gateway.http.send_deadline`).
- **keep-alive** (``keepalive_timeout_s``): uvicorn's own timer, between requests.
- **pipelining**: requests sent before the previous one was answered wait in order,
  at most :data:`MAX_PIPELINED` of them; a read that holds more closes the
  connection (uvicorn parsed every request of a read and queued them all: one
  connection writing ``GET /health`` without reading grew a worker by 1.7 GiB in
  12 s and stalled it). While requests wait, the connection reads no more, so a
  client's further requests stay in its socket until those are answered (uvicorn
  read again after every answer).
- **connection cap** (``max_connections``, per worker process): a connection
  accepted beyond it gets a 503 in OpenAI's error shape on its first request, with
  ``connection: close``. Connections already open are not affected.

One timer per connection, once a second, starts and checks the deadlines: a
deadline starts at the first tick that sees its head or body begun, so a
timeout ``T`` closes between ``T`` and ``T`` + 2 s. Per request this adds three
small overrides (two attribute stores each, and the head's byte count), no
clock read and no timer: about 6k instructions in a request of about 900k
(measured under callgrind on the protocol alone). The base class's methods are
called directly, not through ``super()``, which would cost 800 more per call.

Protocol upgrades: the gateway serves none (no WebSocket, no ``h2c``), so an
``Upgrade`` header is ignored, as RFC 9110 lets a server do: ``curl --http2`` on an
``http://`` URL sends ``Connection: Upgrade, HTTP2-Settings`` and ``Upgrade: h2c``
with its POST. llhttp would stop at such a head and skip its body (the request
then reached the application empty), so the header's name is changed before the
head is parsed. The check is two substring searches of each read that holds head
bytes; an ``Upgrade`` spelt in mixed case, split across reads, or in a head pipelined
behind another in the same read, still stops the parser, and then the request gets a
400 (in its turn, after the answers before it) and the connection is closed, never an empty body.

Bytes that are not HTTP, and heads :mod:`gateway.http.head_fields` refuses, get a 400
(431) in OpenAI's error shape, not uvicorn's plain text; after requests still being
answered (pipelined), those are answered first and the connection then closed, with no
400 the client would take for their answer.

The body's size is the application's limit (``server.max_body_bytes``, counted as it
arrives by :func:`gateway.http.context.read_body`); until the application reads,
uvicorn keeps at most 64 KiB of body per connection. Shutdown: :mod:`drain_linger`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from gateway.http.connection_cap import too_many_connections
from gateway.http.connection_limits import ConnectionLimits as ConnectionLimits
from gateway.http.connection_limits import refusal_answer
from gateway.http.direct_cycle import DirectCycle
from gateway.http.drain_linger import LingeringProtocol
from gateway.http.head_fields import (
    MAX_HEADER_FIELDS,
    DroppedFields,
    RefusedHead,
    refusal,
)
from gateway.http.head_rewrite import UPGRADE_REFUSED, refuse_upgrade, without_upgrade
from gateway.http.pipelining import MAX_PIPELINED, PipelinedFlow, TooManyPipelined, refuse_in_turn
from gateway.http.request_id import RequestIdMiddleware
from gateway.http.send_deadline import SendDeadline, reset

log = logging.getLogger("vgate.connections")

_TICK_S = 1.0
"""How often each connection checks its deadline."""

_NO_HEAD = -1
"""``_head_bytes`` from the end of a request's head to the end of its body."""


def limited_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http=``: :class:`LimitedHttpToolsProtocol` with ``limits``.

    It is a :func:`functools.partial`, not a class. uvicorn only calls it, with
    keyword arguments, once per connection. Unlike a class made on the fly, a
    partial of a module-level class pickles, and uvicorn pickles its config to
    start worker processes (``server.workers > 1``)."""
    return cast(type[asyncio.Protocol], functools.partial(LimitedHttpToolsProtocol, limits=limits))


class LimitedHttpToolsProtocol(LingeringProtocol):
    """uvicorn's httptools protocol with the limits in the module docstring.

    State per connection: ``_head_bytes`` counts the bytes of the request head
    being read (``_NO_HEAD`` from the end of the head to the end of the body).
    ``_deadline`` is when the current head or body must be complete, on the
    loop's clock (0: none yet; the next tick starts one if a head or body has begun).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        HttpToolsProtocol.__init__(self, config, server_state, app_state, _loop)
        self._limits = limits
        self._head_bytes = 0
        self._deadline = 0.0
        self._tick: asyncio.TimerHandle | None = None
        self._chunked = False  # the body being read is chunked
        self._progress = False  # the parser produced body or a chunk during this read
        self._idle_bytes = 0  # chunked-body bytes since the parser last did
        self._overflow = False  # more requests pipelined than MAX_PIPELINED: closing
        self._head_tail = b""  # the last bytes of the last read (see data_received)
        self._answering: RequestResponseCycle | None = None  # the request being answered
        self._send_deadline = SendDeadline(limits.send_timeout_s)
        self._trailers = DroppedFields()  # where a chunked body's trailers go: nowhere

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        HttpToolsProtocol.connection_made(self, transport)
        self.flow = self._flow = PipelinedFlow(transport, self.pipeline)
        open_now = len(self.connections)
        if open_now > self._limits.max_connections:
            self.app = RequestIdMiddleware(too_many_connections)  # x-request-id too
            if open_now == self._limits.max_connections + 1:  # once per crossing of the cap
                self._limits.over_cap.crossed(self.loop.time())
        self._deadline = self.loop.time() + self._limits.header_timeout_s
        self._tick = self.loop.call_later(_TICK_S, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        cycle, answering = self.cycle, self._answering
        HttpToolsProtocol.connection_lost(self, exc)
        # uvicorn cancels the keep-alive timer only on a clean close: after a reset
        # it held this protocol, its transport and last request for the keep-alive
        # timeout (75 s), ~8 KB per connection that no connection cap counts.
        self._unset_keepalive_if_required()
        if answering is not None and answering is not cycle:
            # uvicorn tells only the newest request; the one being answered has
            # requests pipelined behind it (a connection closed for too many of them)
            if not answering.response_complete:
                answering.disconnected = True
            answering.message_event.set()
            _tell_disconnect(answering)
        _tell_disconnect(cycle)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._answering = cycle
        HttpToolsProtocol._start_asgi_task(self, cycle, app)

    def shutdown(self) -> None:
        """Graceful shutdown begins: mark the answers in progress and pipelined behind it
        (uvicorn starts those; any later request never starts) for shutdown_cut.py."""
        for cycle in (self._answering, *[waiting for waiting, _ in self.pipeline]):
            if type(cycle) is DirectCycle:
                cycle.closing = True
        LingeringProtocol.shutdown(self)  # idle: lingers (drain_linger.py)

    def data_received(self, data: bytes) -> None:
        head = self._head_bytes
        # The last bytes read before this read, wherever they belong: a head's blank
        # line may straddle reads (a head that began in the last read, after a body
        # or a request it ended, or one whose blank line came a byte at a time).
        before = self._head_tail
        self._head_tail = data[-3:] if len(data) >= 3 else (before + data)[-3:]
        if head == _NO_HEAD:
            if self._chunked:
                self._feed_chunked(data)
            else:
                self._feed(data)
            return
        if b"pgrade" in data or b"PGRADE" in data:
            data = without_upgrade(data, before)
        limit = self._limits.max_header_bytes
        room = limit - head
        if len(data) <= room:
            self._head_bytes = head + len(data)
            self._feed(data)
            return
        # Only the bytes that fit are parsed as head; the rest may be body or the
        # next request, counted again below once this head has ended.
        self._head_bytes = limit
        self._feed(data[:room])
        self._head_tail = data[:room][-3:]  # what the rest follows
        if self.transport.is_closing():
            return
        if self._head_bytes == limit:  # still the same head: it did not end within the limit
            self._refuse(431, f"The request head exceeds {limit} bytes.", "request_head_too_large")
            return
        self.data_received(data[room:])

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, with an upgrade the rewrite missed refused."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if self._overflow:
                log.debug("closing a connection: over %d pipelined requests", MAX_PIPELINED)
                self.transport.close()
                return
            log.debug("closing a connection: invalid HTTP")
            self._refuse_bytes(refusal(error))
        except httptools.HttpParserUpgrade:
            if not refuse_in_turn(self.pipeline, self.cycle, cast(Any, refuse_upgrade)):
                self.send_400_response(UPGRADE_REFUSED)

    def _refuse_bytes(self, refused: RefusedHead) -> None:
        """Refuse bytes that are not HTTP (or a head ``refused``), and close. After requests
        still being answered (pipelined), those are answered, then the connection closed
        without it: written at once, it reached the client as the earlier one's answer."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self._head_bytes == _NO_HEAD:
            self._write_refusal(refused.status, str(refused), refused.code)
            return
        cycle.keep_alive = False  # the last request answered closes the connection
        self._head_bytes = 0  # no head is being read: no head deadline (the parser has
        self._deadline = 0.0  # stopped; anything more the client sends is refused again)
        self.flow.pause_reading()

    def _feed_chunked(self, data: bytes) -> None:
        """Feed a read of a chunked body; refuse once ``max_header_bytes`` have gone in
        without the parser producing any body or chunk (a trailer that does not end)."""
        self._progress = False
        self._feed(data)
        if self._progress:
            self._idle_bytes = 0
            return
        self._idle_bytes += len(data)
        limit = self._limits.max_header_bytes
        if self._idle_bytes > limit and not self.transport.is_closing():
            log.debug("closing a connection: chunk framing or trailers past the limit")
            cycle = self.cycle
            if cycle is None or cycle.response_started:
                self.transport.close()
            else:
                message = f"The request's chunk framing or trailers exceed {limit} bytes."
                self._write_refusal(431, message, "request_head_too_large")

    def on_chunk_header(self) -> None:
        """httptools: a chunk's size line was parsed (only chunked bodies have them)."""
        self._chunked = self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_body(self, body: bytes) -> None:
        self._progress = True
        HttpToolsProtocol.on_body(self, body)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, in OpenAI's error shape."""
        self._write_refusal(400, msg, "invalid_http_request")

    def on_headers_complete(self) -> None:
        # Every version but 1.1 is checked (0.9 refused, 1.0 gets no 100 Continue), read in
        # ~0.2 µs; llhttp's keep-alive (~20 ns) let HTTP/0.9 + Connection: keep-alive through.
        if (
            self._hosts != 1
            or self.expect_100_continue
            or len(self.headers) > MAX_HEADER_FIELDS
            or self.parser.get_http_version() != "1.1"
        ):
            self.check_fields()  # raises RefusedHead: _feed refuses the head
        self._head_bytes = _NO_HEAD
        self._deadline = 0.0  # the body's starts at the next tick
        HttpToolsProtocol.on_headers_complete(self)
        self.headers = self._trailers  # not into the request's, nor kept (head_fields.py)
        if len(self.pipeline) > MAX_PIPELINED:
            self._overflow = True
            raise TooManyPipelined  # ends this read's parse: _feed closes the connection
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = DirectCycle  # head and body in one write (one_write.py),
            cast(DirectCycle, cycle).attach(self.loop)  # and direct answers (direct_cycle.py)
            if self._lingering:  # came during the drain: answered, then the close
                cast(DirectCycle, cycle).closing, cycle.keep_alive = True, False

    def on_message_complete(self) -> None:
        self._hosts = 0  # (any Host among the trailers counted for nothing)
        self._head_bytes = 0
        self._deadline = 0.0
        self._chunked = False
        self._idle_bytes = 0
        self._progress = True  # the read that ended it counts for the next request not at all
        HttpToolsProtocol.on_message_complete(self)

    def _check_deadline(self) -> None:
        """Runs every ``_TICK_S`` while the connection is open."""
        deadline = self._deadline
        now = self.loop.time()
        if self._send_deadline.passed(self._flow, now):
            log.debug("closing a connection: the client took no bytes of its answer in time")
            self._tick = None
            reset(self.transport)
            return
        if not deadline:
            if self._head_bytes == _NO_HEAD:
                self._deadline = now + self._limits.body_timeout_s
            elif self._head_bytes:  # a head has begun since the last request
                self._deadline = now + self._limits.header_timeout_s
            elif self.timeout_keep_alive_task is None:
                self._bound_idle()
        elif now >= deadline:
            if self.flow.read_paused:
                # The gateway stopped reading, not the client (flow control, or a head
                # begun behind pipelined requests): give it the time again.
                no_head = self._head_bytes == _NO_HEAD
                self._deadline = now + (
                    self._limits.body_timeout_s if no_head else self._limits.header_timeout_s
                )
            else:
                self._expire()
                return
        self._tick = self.loop.call_later(_TICK_S, self._check_deadline)

    def _bound_idle(self) -> None:
        """Start uvicorn's keep-alive timer on a connection idle without one. An answer
        that came before its body's end (an early refusal: a wrong key) had it armed
        then, the body's next read cancelled it, and nothing armed it again: the
        connection stayed open for as long as the client liked, no key needed."""
        cycle = self.cycle
        answered = cycle is None or cycle.response_complete
        if answered and not self.pipeline and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _expire(self) -> None:
        """The head or body deadline has passed: close the connection, with a 408
        for a head that was partly sent."""
        self._tick = None
        if self._head_bytes == _NO_HEAD:
            log.debug("closing a connection: request body not complete in time")
            self.transport.close()
        elif self._head_bytes == 0:
            log.debug("closing a connection: no request in time")
            self.transport.close()
        else:
            log.debug("closing a connection: request head not complete in time")
            self._refuse(408, "The request head was not complete in time.", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` with an OpenAI error, for a request whose head was not
        accepted, and close; just close if an earlier request on this connection
        (pipelined) is still being answered."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        self._write_refusal(status, message, code)

    def _write_refusal(self, status: int, message: str, code: str) -> None:
        """An OpenAI error with ``connection: close`` (:func:`refusal_answer`), then close."""
        request_id = self._limits.refusal_ids.next()
        headers = self.server_state.default_headers
        self.transport.write(refusal_answer(status, message, code, headers, request_id))
        self.transport.close()


def _tell_disconnect(cycle: RequestResponseCycle | None) -> None:
    """Call a direct cycle's ``on_disconnect`` once, if it was lost mid-answer."""
    if type(cycle) is DirectCycle and cycle.disconnected:
        tell = cycle.on_disconnect
        if tell is not None:
            cycle.on_disconnect = None
            tell()
