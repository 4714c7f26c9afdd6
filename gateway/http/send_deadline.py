"""The send deadline (``server.send_timeout_s``): a client that takes none of its answer.

While a connection's write buffer is full (the transport paused writing), the client
is taking no bytes. A client that stopped reading held its stream, its engine
connection and the buffered answer for as long as it kept the socket open. The
connection's once-a-second tick (:mod:`gateway.http.connections`) asks
:meth:`SendDeadline.passed`; once writing has stayed paused, without resuming once,
for ``send_timeout_s``, the connection is :func:`reset` and the request being
answered sees a disconnect (its engine stream cancelled, its slot and tokens
settled). Progress is writing resuming, which the transport reports when its buffer
drains below the low-water mark (16 KiB in uvloop): a slow client that keeps taking
its answer restarts the deadline each time; one that takes less than the buffer (64
KiB) plus the kernel's send buffer within the timeout is reset. Nothing of this runs
per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from gateway.http.pipelining import PipelinedFlow

_LINGER_NONE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


class SendDeadline:
    """One connection's: when a tick first saw writing paused, and the flow's resume
    count then."""

    __slots__ = ("_resumed", "_since", "_timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._since: float | None = None
        self._resumed = 0

    def passed(self, flow: PipelinedFlow, now: float) -> bool:
        """Whether writing has stayed paused, never resuming, for the timeout."""
        if not flow.write_paused:
            self._since = None
            return False
        if self._since is None or flow.resumed != self._resumed:
            self._since, self._resumed = now, flow.resumed
            return False
        return now - self._since >= self._timeout_s


def reset(transport: asyncio.Transport) -> None:
    """Close with a reset: what was buffered is dropped, by the kernel too (a plain close
    would keep the unsent bytes, and the connection, until the client took them)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
    transport.abort()
