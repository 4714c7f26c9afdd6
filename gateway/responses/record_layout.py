"""How a stored record lies in its bytes, so that a large one is decoded a slice at a
time on the event loop.

A record of up to ``responses.max_stored_bytes`` (8 MiB) of small items takes orjson
30-90 ms to decode, and orjson holds the GIL for the whole call: decoded in a thread
(as a large create body is), it stalls the event loop all the same (measured on an
8 MiB record: the loop waited up to 160 ms between turns, longer than decoding it on
the loop), and several decoded at once in threads held their records' objects
together (a test's peak went from 6.7 to 8.7 MB). So the conversation, the bulk of
a record, is written in slices of at most :data:`SLICE_ITEMS` items and
:data:`SLICE_BYTES` bytes (a slice of 256 items of 32 KiB was the whole 8 MiB record
again) whose bounds the record names, and a large record is read one slice per turn
of the event loop (:func:`read_sliced`). One item larger than that is a slice of its
own.

A record is a header, a newline and the conversation. The header is a JSON object:
``owner``, ``response``, ``input_ids`` and ``input_slices``; the conversation is its
slices one after the other, each a JSON array (``[a,b][c,d]``), and ``input_slices``
the offset in it where each slice ends. Each slice is decoded where it lies, never
copied. orjson never writes a raw newline, so the first one ends the header. A
record of the earlier layout (one JSON document, the items in its ``input``: no
newline) is still read, whole.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

import orjson

from gateway.protocol.exact_json import exact_reading

SLICE_ITEMS = 256
"""The most items a slice holds: one slice of small items decodes in about a
millisecond."""

SLICE_BYTES = 256 * 1024
"""The most bytes a slice of more than one item takes (a few milliseconds to decode)."""

SEPARATOR = b"\n"


def encoded_in_slices(items: list[Any]) -> tuple[bytes, list[int]]:
    """``items`` as one JSON array (what ``orjson.dumps(items)`` writes) and the offsets
    of the commas between its slices. Raises ``orjson.JSONEncodeError`` as
    ``orjson.dumps`` does."""
    parts: list[bytes] = []
    for start in range(0, len(items), SLICE_ITEMS):
        parts += _slice_parts(items[start : start + SLICE_ITEMS])
    return _joined(parts)


async def encoded_in_turns(items: list[Any]) -> tuple[bytes, list[int]]:
    """:func:`encoded_in_slices`, a slice of items per turn of the event loop (8 MiB of
    small items took orjson ~20 ms in one go)."""
    parts: list[bytes] = []
    for start in range(0, len(items), SLICE_ITEMS):
        if start:
            await asyncio.sleep(0)
        parts += _slice_parts(items[start : start + SLICE_ITEMS])
    return _joined(parts)


def _slice_parts(chunk: list[Any]) -> list[bytes]:
    """``chunk`` (at most :data:`SLICE_ITEMS` items) as one JSON array, or as several
    of at most :data:`SLICE_BYTES` each when it is larger (:func:`_by_size`)."""
    part = orjson.dumps(chunk)
    return _by_size(chunk) if len(part) > SLICE_BYTES and len(chunk) > 1 else [part]


def _joined(parts: list[bytes]) -> tuple[bytes, list[int]]:
    """The JSON arrays ``parts`` as one, and the offsets of the commas between them."""
    if len(parts) <= 1:
        return (parts[0] if parts else b"[]"), []
    joined = bytearray(b"[")
    cuts: list[int] = []
    for part in parts:
        if len(joined) > 1:
            cuts.append(len(joined))
            joined += b","
        joined += memoryview(part)[1:-1]
    joined += b"]"
    return bytes(joined), cuts


def _by_size(items: list[Any]) -> list[bytes]:
    """``items`` as JSON arrays of consecutive items, each of at most
    :data:`SLICE_BYTES` (or of one item), encoded item by item (orjson writes an array
    as its items joined by commas, no spaces)."""
    parts: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for item in items:
        one = orjson.dumps(item)
        if group and size + len(one) > SLICE_BYTES:
            parts.append(b"[" + b",".join(group) + b"]")
            group, size = [], 0
        group.append(one)
        size += len(one) + 1
    parts.append(b"[" + b",".join(group) + b"]")
    return parts


def write_record(fields: dict[str, Any], items: bytes, cuts: list[int]) -> bytes:
    """The record of the header ``fields`` and the conversation ``items`` (one JSON
    array, cut at ``cuts``: :func:`encoded_in_slices`), sliced. Raises
    ``orjson.JSONEncodeError`` for ``fields`` that orjson cannot write."""
    view = memoryview(items)
    bounds = [0, *cuts, len(items) - 1]  # "[", the cuts' commas, "]"
    parts: list[Any] = []
    ends: list[int] = []
    size = 0
    for start, end in pairwise(bounds):
        parts += (b"[", view[start + 1 : end], b"]")
        size += end - start + 1
        ends.append(size)
    header = orjson.dumps({**fields, "input_slices": ends})
    return b"".join((header, SEPARATOR, *parts))


def split_record(data: bytes) -> tuple[memoryview, memoryview] | None:
    """A record's header and conversation (views of ``data``, not copies); None for a
    record of the earlier layout."""
    end = data.find(SEPARATOR)
    if end < 0:
        return None
    view = memoryview(data)
    return view[:end], view[end + 1 :]


def slices_of(conversation: memoryview, ends: Any) -> list[memoryview] | None:
    """The slices of ``conversation`` that end at ``ends`` (the header's
    ``input_slices``); None when they do not bound JSON arrays that fill it."""
    if not isinstance(ends, list) or not ends or ends[-1] != len(conversation):
        return None
    found: list[memoryview] = []
    start = 0
    for end in ends:
        if type(end) is not int or not start + 2 <= end <= len(conversation):
            return None
        piece = conversation[start:end]
        if piece[0] != 0x5B or piece[-1] != 0x5D:  # "[" ... "]"
            return None
        found.append(piece)
        start = end
    return found


async def read_sliced(slices: list[memoryview], exact: bool = False) -> list[Any]:
    """The items of ``slices``, decoded one per turn of the event loop; with ``exact``,
    their integers beyond 64 bits as written (:func:`read_exactly`, slice by slice:
    read whole by the standard library's parser, a conversation of 8 MiB held the loop
    ~190 ms). Raises ``orjson.JSONDecodeError`` for one that does not read."""
    read_slice = read_exactly if exact else orjson.loads
    read: list[Any] = []
    for piece in slices:
        await asyncio.sleep(0)
        read.extend(read_slice(piece))
    return read


def read_exactly(source: memoryview) -> Any:
    """``source`` (a part of a record) read with its integers beyond 64 bits as written:
    by the standard library's parser only when its own bytes hold a run of 19 digits
    (:func:`gateway.protocol.exact_json.exact_reading`), else by orjson."""
    exact = exact_reading(source.tobytes())
    return orjson.loads(source) if exact is None else exact
