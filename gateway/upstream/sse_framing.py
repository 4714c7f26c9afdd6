"""Cutting an engine's SSE body into runs of whole events, whatever the reads.

The relay passes on runs of complete events (each ending in a blank line), so an
event is never split between two writes to the client and the taps (usage, cache,
ids) see whole events. :class:`EventFramer` takes each read of the body and returns
the events it completes:

- **The usual read** holds whole events: it is returned as it came, after one search
  for its last blank line (no copy).
- **An event spread over reads** is collected in a buffer that grows in place, and
  only the new bytes are searched, so a large event costs linear time, not the
  quadratic time of re-joining and re-scanning it on every read. It may grow to
  :data:`MAX_EVENT_BYTES`; an engine whose event grows past it (a ``data:`` line
  that never ends) gets :class:`gateway.errors.UpstreamError`, so its stream ends
  with an error instead of holding the gateway's memory for as long as it trickles.
- **Line ends**: SSE allows CRLF and lone CR as well as LF (vLLM writes LF;
  sse-starlette and llama.cpp's server write CRLF), line by line. The first line end
  decides how a stream is read: one that ends lines with CR is turned into LF as it
  arrives, so everything past here reads one form. An LF stream costs one search
  for CR per read (JSON cannot hold a raw CR, so one is a line end): if one comes,
  the stream is read as mixed (CRLF and lone CR turned into LF) from then on.
"""

from __future__ import annotations

from gateway.errors import UpstreamError

MAX_EVENT_BYTES = 32 * 1024 * 1024
"""The largest SSE event accepted from an engine (vLLM's largest, a completion's first
event carrying prompt logprobs, stays far below it)."""

_BLANK_LINE = b"\n\n"


class EventFramer:
    """One stream's framing state: :meth:`feed` each read, get the completed events."""

    __slots__ = ("_carry", "_ends", "_pending", "_undecided")

    def __init__(self) -> None:
        self._pending: bytearray | None = None
        """An event begun and not ended (None: the last read ended on a blank line)."""
        self._ends: bytes | None = None
        """How lines end: LF, CRLF or CR (None until the first line end has arrived)."""
        self._undecided = bytearray()
        """What came before the first line end (held until it decides the form)."""
        self._carry = False
        """A CRLF stream's read ended on CR, half of a line end: it waits for the next."""

    def feed(self, data: bytes) -> bytes | None:
        """The events ``data`` completes, with what came before them (None: none yet)."""
        if self._ends is None:
            decided = self._decide(data)
            if decided is None:
                return None
            data = decided
        if self._ends is LF:
            if b"\r" in data:  # line ends mixed (SSE allows it, line by line): CR seen
                self._ends = CRLF  # every CRLF and lone CR turned into LF from now on
                data = self._as_lf(data)
        else:
            data = self._as_lf(data)
        pending = self._pending
        if pending is None:
            cut = data.rfind(_BLANK_LINE)
            if cut >= 0 and cut == len(data) - 2:  # whole events only: the usual read
                return data
            if cut < 0:
                self._hold(data)
                return None
            self._hold(data[cut + 2 :])
            return data[: cut + 2]
        start = len(pending) - 1  # a blank line may begin in what was held
        pending += data
        cut = pending.rfind(_BLANK_LINE, start)
        if cut < 0:
            if len(pending) > MAX_EVENT_BYTES:
                raise _too_large()
            return None
        ready = bytes(pending[: cut + 2])
        rest = pending[cut + 2 :]
        self._pending = rest if rest else None
        return ready

    def _decide(self, data: bytes) -> bytes | None:
        """Everything so far, once the first line end says the form (None: not yet)."""
        held = self._undecided
        ends: bytes | None
        if held.endswith(b"\r"):  # the first line end began with the last read
            ends = CRLF if data.startswith(b"\n") else CR
        else:
            ends = _first_line_end(data)
            if ends is not None and not held:  # the usual first read: no copy
                self._ends = ends
                return data
        held += data
        if ends is None:
            if len(held) > MAX_EVENT_BYTES:
                raise _too_large()
            return None
        self._ends = ends
        self._undecided = bytearray()
        return bytes(held)

    def _hold(self, data: bytes) -> None:
        if len(data) > MAX_EVENT_BYTES:
            raise _too_large()
        self._pending = bytearray(data) if data else None

    def _as_lf(self, data: bytes) -> bytes:
        if self._ends is CR:  # (a CRLF that comes later is one line end too)
            return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._carry:
            data = b"\r" + data
            self._carry = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._carry = True
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


LF, CRLF, CR = b"\n", b"\r\n", b"\r"


def _first_line_end(data: bytes) -> bytes | None:
    """How the first line end in ``data`` is written (None: there is none, or it is a CR
    at the very end, which the next read completes)."""
    lf, cr = data.find(b"\n"), data.find(b"\r")
    if cr < 0:
        return None if lf < 0 else LF
    if 0 <= lf < cr:
        return LF
    if cr == len(data) - 1:
        return None
    return CRLF if data[cr + 1] == 10 else CR


def _too_large() -> UpstreamError:
    return UpstreamError(
        f"the engine sent an event larger than {MAX_EVENT_BYTES // (1024 * 1024)} MiB"
    )
