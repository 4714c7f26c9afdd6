"""A whole answer in one socket write: the response head held until its body comes.

uvicorn writes an answer's status line and headers to the socket when the
application sends ``http.response.start``, and its body at the next message:
two ``send`` system calls and two TCP segments for every non-streaming answer,
when the body follows the head within microseconds. :class:`OneWriteCycle`
keeps uvicorn's request/response cycle exactly as it is (its header checks,
keep-alive, ``connection: close``, flow control, disconnects) and only changes
*when* the head goes out: an answer that declares its ``content-length`` has its
head held and written together with the first body message. Streams (no
``content-length``, chunked) still get their head at once, so a client sees a
stream's headers before its first token.

:class:`gateway.http.connections.LimitedHttpToolsProtocol` makes each request's
cycle one of these (``cycle.__class__``: the subclass adds behaviour, no state
uvicorn would not set up). Measured per non-streaming request through the
gateway (stub engine, 64 connections): see benchmarks/RESULTS.md.

It also closes the connection after an answer to a request whose client waits for
``100 Continue`` before sending its body, when that body was never asked for (an
early refusal): what the client sends next may be that body or its next request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class _HeldWrites:
    """Stands in for the transport while uvicorn writes a head: keeps the bytes."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _AfterHead:
    """Stands in for the transport while uvicorn writes the first body message: the
    held head goes out with it, in one write; everything else reaches the transport."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self._head = head

    def write(self, data: bytes) -> None:
        head, self._head = self._head, b""
        self._transport.write(head + data if head else data)

    def __getattr__(self, name: str) -> Any:  # close(), is_closing(), ...
        return getattr(self._transport, name)

    def flush(self) -> None:
        """The head, if no body write took it (an empty body is not written)."""
        if self._head:
            head, self._head = self._head, b""
            self._transport.write(head)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's cycle, writing a ``content-length`` answer's head with its body."""

    _held_head: bytes = b""

    async def send(self, message: ASGISendEvent) -> None:
        if not self.response_started:
            await self._send_start(message)
            return
        head = self._held_head
        if not head:
            await RequestResponseCycle.send(self, message)
            return
        self._held_head = b""
        transport = self.transport
        after = _AfterHead(transport, head)
        self.transport = after  # type: ignore[assignment]
        try:
            await RequestResponseCycle.send(self, message)
        finally:
            self.transport = transport
            after.flush()

    async def _send_start(self, message: ASGISendEvent) -> None:
        if self.waiting_for_100_continue and self.more_body:
            # Answered before the body it told the client to wait for (100 Continue, sent
            # when the body is first read): a client may then send that body or not, so
            # what follows is either body or its next request. uvicorn kept the
            # connection and read the next request as body: it never got an answer.
            self.keep_alive = False  # "connection: close", and the close once answered
        transport = self.transport
        held = _HeldWrites()
        self.transport = held  # type: ignore[assignment]
        try:
            await RequestResponseCycle.send(self, message)
        finally:
            self.transport = transport
        if not held.data:
            return
        if self.chunked_encoding is False and self.scope["method"] != "HEAD":
            self._held_head = held.data  # its body follows: one write for both
        else:
            transport.write(held.data)
