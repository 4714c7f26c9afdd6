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
  sse-starlette and llama.cpp's server write CRLF), line by line, mixed as they come.
  A read holding a CR has every CRLF and lone CR turned into LF, so everything past
  here reads one form; an LF read costs one search for CR (JSON cannot hold a raw CR,
  so one is a line end). A CR that ends a read is a line end at once (the event it
  ends goes out now, not when a next read, which may never come, says what followed);
  an LF that begins the next read is the rest of that CRLF and is dropped. So every
  split of every mix of line ends gives the same events as the stream read whole.
"""

from __future__ import annotations

from gateway.errors import UpstreamError

MAX_EVENT_BYTES = 32 * 1024 * 1024
"""The largest SSE event accepted from an engine (vLLM's largest, a completion's first
event carrying prompt logprobs, stays far below it)."""

_BLANK_LINE = b"\n\n"


class EventFramer:
    """One stream's framing state: :meth:`feed` each read, get the completed events."""

    __slots__ = ("_after_cr", "_pending")

    def __init__(self) -> None:
        self._pending: bytearray | None = None
        """An event begun and not ended (None: the last read ended on a blank line)."""
        self._after_cr = False
        """The last read ended on CR (a line end already): an LF next is its CRLF's."""

    def feed(self, data: bytes) -> bytes | None:
        """The events ``data`` completes, with what came before them (None: none yet)."""
        if self._after_cr and data:
            self._after_cr = False
            if data[0] == 10:  # the LF of a CRLF split between reads: already counted
                data = data[1:]
        if b"\r" in data:  # CRLF or lone CR (SSE allows both, line by line): into LF
            self._after_cr = data[-1] == 13
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
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

    def _hold(self, data: bytes) -> None:
        if len(data) > MAX_EVENT_BYTES:
            raise _too_large()
        self._pending = bytearray(data) if data else None


def _too_large() -> UpstreamError:
    return UpstreamError(
        f"the engine sent an event larger than {MAX_EVENT_BYTES // (1024 * 1024)} MiB"
    )
