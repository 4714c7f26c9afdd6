"""EventFramer: an engine's SSE body, read in any pieces and with any of SSE's line
ends, comes out as runs of whole LF events; an event that never ends is refused at
MAX_EVENT_BYTES instead of being held."""

from __future__ import annotations

import random

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
    """The CR ending the first read ends its event at once; the LF after it is its own."""
    first, second = b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n"
    assert framed([first, second]) == [b"data: 1\n\n", b"data: 2\n\n"]


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


# Every split of every line-end style: the framed events are those of the whole stream.

MULTI_LINE = [
    b'data: {"n": 1}',
    b': a comment\ndata: {"n": 2,\ndata:  "m": 3}',
    b'event: message\nid: 7\ndata: {"n": 4}',
    b"data: [DONE]",
]
"""Events of several lines (written with LF here; :func:`written` puts each style in)."""

STYLES: dict[str, list[bytes]] = {
    "lf": [b"\n"],
    "crlf": [b"\r\n"],
    "cr": [b"\r"],
    "mixed": [b"\n", b"\r", b"\r\n"],  # (a CR then an LF would be one CRLF)
    "cr-then-crlf": [b"\r", b"\r", b"\r\n"],
}


def written(style: str) -> bytes:
    """:data:`MULTI_LINE`'s events with the style's line ends, taken in turn line by line
    (an event's blank line is two line ends, which may differ)."""
    ends = STYLES[style]
    out, turn = bytearray(), 0
    for event in MULTI_LINE:
        for line in [*event.split(b"\n"), b""]:
            out += line + ends[turn % len(ends)]
            turn += 1
    return bytes(out)


def events_of(runs: list[bytes]) -> list[bytes]:
    """The events in ``runs``, each run checked to be whole events, all of them exactly
    the stream in LF (no line end lost or added)."""
    assert all(run.endswith(b"\n\n") for run in runs)
    assert b"".join(runs) == written("lf")
    return b"".join(runs).split(b"\n\n")[:-1]


def test_each_style_is_written_with_its_line_ends() -> None:
    assert b"\r" not in written("lf") and b"\r\r" in written("cr")
    assert b"\r\n\r\n" in written("crlf") and b"\r\r\n" in written("cr-then-crlf")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_split_point_gives_the_unsplit_events(style: str) -> None:
    """Two reads, split at each byte: a CRLF split between them (first read ends in CR,
    the next begins with LF) is one line end, a CR CR at a read's end is a blank line.
    Before, a stream whose first line ended in a lone CR read the LF of a split CRLF
    as a second line end: an event cut in two, or an empty event added."""
    data = written(style)
    whole = events_of(framed([data]))
    assert whole == MULTI_LINE
    for cut in range(1, len(data)):
        assert events_of(framed([data[:cut], data[cut:]])) == whole, (style, cut)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_random_multi_splits_give_the_unsplit_events(style: str) -> None:
    data = written(style)
    chooser = random.Random(style)
    for _ in range(200):
        cuts = sorted(chooser.sample(range(1, len(data)), chooser.randint(2, 12)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert events_of(framed(pieces)) == MULTI_LINE, (style, cuts)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_the_last_event_is_out_when_its_read_ends(style: str) -> None:
    """A read that ends on a CR ending an event gives that event at once: nothing waits
    for a next read that may never come (the ``[DONE]`` of the stream's last read)."""
    data = written(style)
    framer = EventFramer()
    runs = [run for piece in (data[:-1], data[-1:]) if (run := framer.feed(piece))]
    assert events_of(runs) == MULTI_LINE
    assert runs[-1].endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("first", [b"data: 1\n\n", b"data: 1\r\n\r\n", b"data: 1\r\r"])
@pytest.mark.parametrize("last", [b"data: [DONE]\r\r", b"data: [DONE]\r\n\r"])
def test_a_last_read_ending_on_cr_ends_its_event(first: bytes, last: bytes) -> None:
    """Before, a stream read as CRLF (or LF, then mixed) held a read's final CR back for
    the next read, which never came: ``[DONE]`` was lost, the stream failed as cut short."""
    assert framed([first, last]) == [b"data: 1\n\n", b"data: [DONE]\n\n"]
