"""EventFramer: an engine's SSE body, read in any pieces and with any of SSE's line
ends, comes out as runs of whole LF events; an event that never ends is refused at
MAX_EVENT_BYTES instead of being held."""

from __future__ import annotations

import pytest

from gateway.errors import UpstreamError
from gateway.upstream.sse_framing import MAX_EVENT_BYTES, EventFramer

EVENTS = [b'data: {"n": %d, "text": "a\\r\\nb"}' % n for n in range(5)] + [b"data: [DONE]"]


def stream(line_end: bytes) -> bytes:
    return b"".join(event + line_end * 2 for event in EVENTS)


def framed(pieces: list[bytes]) -> list[bytes]:
    framer = EventFramer()
    runs = [framer.feed(piece) for piece in pieces]
    return [run for run in runs if run is not None]


def test_a_read_of_whole_events_is_passed_on_as_it_came() -> None:
    data = stream(b"\n")
    (run,) = framed([data])
    assert run is data


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_any_split_and_any_line_end_gives_the_same_lf_events(line_end: bytes, size: int) -> None:
    data = stream(line_end)
    runs = framed([data[i : i + size] for i in range(0, len(data), size)])
    assert all(run.endswith(b"\n\n") for run in runs)
    assert b"".join(runs) == stream(b"\n")


def test_a_crlf_split_between_reads_is_one_line_end() -> None:
    first, second = b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n"
    assert framed([first, second]) == [b"data: 1\n\ndata: 2\n\n"]


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_a_stream_that_mixes_line_ends_gives_the_same_lf_events(size: int) -> None:
    """The first event ends in LF, later ones in CRLF or CR: each line end counts as
    SSE reads it (before, the first decided for the whole stream, and the rest never
    ended an event: the stream failed as cut short)."""
    data = EVENTS[0] + b"\n\n" + EVENTS[1] + b"\r\n\r\n" + EVENTS[2] + b"\r\r"
    data += EVENTS[3] + b"\n\r\n"
    runs = framed([data[i : i + size] for i in range(0, len(data), size)])
    assert b"".join(runs) == b"".join(event + b"\n\n" for event in EVENTS[:4])


def test_a_stream_of_lone_crs_that_later_sends_crlf_keeps_its_events() -> None:
    data = EVENTS[0] + b"\r\r" + EVENTS[1] + b"\r\n\r\n" + EVENTS[2] + b"\r\r"
    (run,) = framed([data])
    assert run == b"".join(event + b"\n\n" for event in EVENTS[:3])


def test_an_event_that_never_ends_is_refused_at_the_bound() -> None:
    framer = EventFramer()
    framer.feed(b"data: {")
    piece = b"x" * (1024 * 1024)
    with pytest.raises(UpstreamError, match="larger than 32 MiB"):
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            assert framer.feed(piece) is None


def test_a_first_line_that_never_ends_is_refused_too() -> None:
    framer = EventFramer()
    piece = b"x" * (1024 * 1024)
    with pytest.raises(UpstreamError):
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            assert framer.feed(piece) is None


def test_a_large_event_within_the_bound_arrives_whole() -> None:
    event = b"data: " + b"y" * (8 * 1024 * 1024) + b"\n\n"
    runs = framed([event[i : i + 65536] for i in range(0, len(event), 65536)])
    assert runs == [event]
