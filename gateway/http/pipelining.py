"""HTTP/1.1 pipelining, bounded: requests a client sends before the previous one was
answered wait in order behind it, at most :data:`MAX_PIPELINED` of them, and the
connection reads nothing more while any wait (:class:`PipelinedFlow`).

uvicorn parsed every request of each read and queued them all, and read again after
every answer and whenever an application asked for its body: one connection writing
``GET /health`` without reading its answers grew a worker by 1.7 GiB in 12 s and
stalled it for seconds (no key needed). :class:`gateway.http.connections.
LimitedHttpToolsProtocol` raises :class:`TooManyPipelined` from the parser's callback
past the cap, which ends the read's parse, and closes the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sized

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

MAX_PIPELINED = 64
"""Requests one connection may have waiting behind the one being answered (HTTP/1.1
pipelining); a client that sends more in one go has its connection closed. With no
read while any wait, what they hold is at most one read's requests (uvloop reads up
to 256 KiB), each parsed into a few kilobytes at most."""


class TooManyPipelined(Exception):
    """Raised from the parser's callback to stop parsing a read that holds more
    pipelined requests than :data:`MAX_PIPELINED` (the connection is then closed)."""


class PipelinedFlow(FlowControl):
    """uvicorn's flow control, except that the connection reads nothing more while
    pipelined requests wait: uvicorn read again after every answer and whenever an
    application asked for its body, parsing every request of each new read into the
    queue. (The request being answered needs no more bytes: the ones waiting behind
    it were parsed after its body.)"""

    def __init__(self, transport: asyncio.Transport, waiting: Sized) -> None:
        FlowControl.__init__(self, transport)
        self._waiting = waiting
        self.resumed = 0
        """How many times writing resumed (the client took bytes): the send deadline's
        sign of progress."""

    def resume_writing(self) -> None:
        self.resumed += 1
        FlowControl.resume_writing(self)

    def resume_reading(self) -> None:
        if not self._waiting:
            FlowControl.resume_reading(self)


def refuse_in_turn(
    pipeline: deque[tuple[RequestResponseCycle, ASGI3Application]],
    cycle: RequestResponseCycle | None,
    refusal: ASGI3Application,
) -> bool:
    """If ``cycle`` waits behind the request being answered, have ``refusal`` answer it
    in its turn, and return True (False: it does not wait). A refusal written at once
    would reach the client ahead of the earlier requests' answers, as the first one's."""
    if cycle is None or not pipeline or pipeline[0][0] is not cycle:
        return False
    pipeline[0] = (cycle, refusal)  # (uvicorn queues the newest request on the left)
    return True
