"""A create's conversation, encoded once, its integers beyond 64 bits exact.

The items a create sends (the previous record's input and output, then the new input)
are written twice: into the engine's body and into the new record. They are encoded
once, here, and both writes embed the bytes (:class:`orjson.Fragment`), so the decoded
conversation (up to ~24x a record's bytes in memory) is dropped as soon as the request
is admitted instead of living as long as the engine takes to answer.

Exactness is looked for lazily, as chat's rewrites do
(:func:`gateway.protocol.exact_json.encoded_exactly`): the body and the record are
read by orjson, which reads an integer beyond 64 bits as a float; only when what is
written shows a float of 1e16 or more (``e+``) are the sources (the create's body, the
previous record) read again exactly and the items written from that reading. The
create's body is read so once at most, its reading shared with the engine's body
written around the items (:class:`gateway.protocol.exact_json.ExactSource`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.protocol.exact_json import ExactSource, exact_reading, restored, shows_big_float
from gateway.responses.record_layout import encoded_in_turns
from gateway.responses.references import resolved
from gateway.responses.store import StoredResponse


async def encoded_items(
    items: list[Any], given: Any, source: ExactSource, previous: StoredResponse | None
) -> tuple[bytes, list[int]]:
    """``items`` (:func:`gateway.responses.conversation.conversation`'s, from
    ``previous`` and the create body ``source``, whose ``input`` orjson read as
    ``given``) as JSON, each integer beyond 64 bits as its source wrote it, and the
    cuts between its slices (the record's layout:
    :func:`gateway.responses.record_layout.encoded_in_slices`). ``previous`` is read
    again exactly a slice per turn of the event loop (:meth:`StoredResponse.exact`);
    the body's exact reading is ``source``'s, which the engine's body shares."""
    encoded, cuts = await encoded_in_turns(items)
    if not shows_big_float(encoded):
        return _sized(encoded, cuts)
    before: list[Any] = []
    exact = previous
    if previous is not None:
        exact = await previous.exact()
        before = [*exact.input_items, *exact.output]
    # The items before the new ones are ``previous``'s as orjson read them, unchanged:
    # its exact reading is them as written (no walk over the whole conversation).
    new = items[len(before) :]
    body = source.reading()
    if isinstance(body, dict):  # else none in the body: a referenced item may hold one
        given = body.get("input")  # (orjson's reading is exact then: not read again)
    exact_new = new
    if isinstance(given, list) and len(given) == len(new):
        exact_new = resolved(given, exact)[0]  # a reference read as the item it names
    return _sized(*await encoded_in_turns([*before, *restored(new, exact_new)]))


def _sized(encoded: bytes, cuts: list[int]) -> tuple[bytes, list[int]]:
    """``encoded`` in a copy of its size, unless it is one already (joined from its
    slices: copying it again took an 8 MiB conversation's memcpy)."""
    return (encoded if cuts else exact_size(encoded)), cuts


def encoded_ids(ids: list[str]) -> bytes:
    """A conversation's item ids as a JSON array (one ``str`` object each, decoded, took
    ~90 bytes an id; encoded, ~40)."""
    return exact_size(orjson.dumps(ids))


def exact_size(encoded: bytes) -> bytes:
    """``encoded`` (orjson's output, kept for a whole request) in a copy of its size:
    orjson leaves its buffer as it grew it (4 MiB held for 1.1 MB written)."""
    return memoryview(encoded).tobytes() if len(encoded) > 65536 else encoded


def exactly_read(source: bytes, read: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """``read`` (orjson's reading of ``source``, or of its ``key``) read again with its
    integers beyond 64 bits as written; ``read`` when ``source`` holds none."""
    exact = exact_reading(source)
    if isinstance(exact, dict) and key is not None:
        exact = exact.get(key)
    return exact if isinstance(exact, dict) else read


def written_exactly(write: Callable[[Any], bytes], value: Any, exact: Callable[[], Any]) -> bytes:
    """``write(value)``, or ``write(exact())`` when that shows a float orjson may have
    read from an integer beyond 64 bits (``exact``: the same value read exactly)."""
    encoded = write(value)
    return write(exact()) if shows_big_float(encoded) else encoded


async def written_from_record(
    value: Any, record: StoredResponse, exact: Callable[[StoredResponse], Any]
) -> bytes:
    """``orjson.dumps(value)`` (``value`` taken from ``record``), or of ``exact`` of the
    record read again exactly (a slice per turn of the event loop:
    :meth:`StoredResponse.exact`) when that shows a float of 1e16 or more."""
    encoded = orjson.dumps(value)
    return orjson.dumps(exact(await record.exact())) if shows_big_float(encoded) else encoded
