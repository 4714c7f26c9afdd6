"""A graceful shutdown that does not reset the requests already on their way.

uvicorn's graceful shutdown closes every idle keep-alive connection at once. A client
cannot know the drain began: a request it sent a moment before (on a connection it
kept, or on one the worker had just accepted) arrives on a closed socket and the
client sees a connection error, not an answer (caught by a test's load: a
Responses request cut 5 ms after it began, as a worker of two drained). Such a
connection now lingers for :data:`LINGER_S`: a request that arrives meanwhile is
answered, with ``connection: close``, and the connection closed after it; one that
stays idle is closed when the linger ends. A busy client thus moves to another
worker (or replica) on its next request, having lost none; the drain waits for
lingering connections as for any other (at most :data:`LINGER_S` more). Nothing
changes before a shutdown: one attribute read per request head.
"""

from __future__ import annotations

from gateway.http.head_fields import FieldCheckingProtocol

LINGER_S = 1.0
"""How long an idle connection stays open once the drain begins."""


class LingeringProtocol(FieldCheckingProtocol):
    """uvicorn's httptools protocol whose idle connections linger at shutdown (module
    docstring). ``_lingering``: the drain has begun for this connection."""

    _lingering: bool = False
    linger_s: float = LINGER_S

    def shutdown(self) -> None:
        """The drain begins: a request in progress closes the connection once answered
        (as uvicorn does); an idle connection lingers."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        elif not self._lingering:
            self._lingering = True
            self.loop.call_later(self.linger_s, self._end_linger)

    def _end_linger(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:  # a request that came meanwhile closes it once answered
            cycle.keep_alive = False
