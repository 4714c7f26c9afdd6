"""What the gateway keeps of a response, and the store that keeps it.

A :class:`StoredResponse` is everything a follow-up or a retrieval needs, in one
record: the response object as the client got it, the input items that produced it
(the whole conversation so far, so continuing it never walks a chain of records
that may have expired one by one) and its owner, the name of the API key that
created it. Only the owner sees it: to any other key it does not exist.

Records travel as bytes (a JSON header and the conversation's JSON array, laid out so
that a large one is decoded a slice at a time: :mod:`gateway.responses.record_layout`),
so any byte store with TTLs holds them (:mod:`gateway.backends.memory.responses`,
:mod:`gateway.backends.redis.responses`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.protocol.exact_json import with_exact_integers
from gateway.responses.record_layout import (
    encoded_in_slices,
    read_exactly,
    read_sliced,
    slices_of,
    split_record,
    write_record,
)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One response as the gateway keeps it."""

    id: str
    owner: str
    response: dict[str, Any]
    input_items: list[Any]
    """Exactly what the engine got as ``input`` (the whole conversation so far)."""
    input_ids: list[str]
    """One id per input item, for listing them: stable from turn to turn, and kept
    apart from the items so the engine never gets ids it did not make."""
    source: bytes = field(default=b"", compare=False, repr=False)
    """The encoded record this one was read from (b"": made here), for :meth:`exact`."""

    def encode(self) -> bytes:
        items, cuts = encoded_in_slices(self.input_items)
        return encode_record(self.owner, self.response, items, self.input_ids, cuts)

    async def exact(self) -> StoredResponse:
        """This record read again with its integers beyond 64 bits as they were written
        (:mod:`gateway.protocol.exact_json`): only for a write that shows a float of
        1e16 or more, as orjson reads such an integer (the rare record; but any text
        with "e+" and a run of 19 digits makes one, so a slice per turn of the event
        loop, as :meth:`decode_in_turns` reads)."""
        if not self.source:
            return self
        exact = await StoredResponse.decode_in_turns(self.id, self.source, exact=True)
        return self if exact is None else exact

    @classmethod
    def decode(cls, response_id: str, data: bytes, exact: bool = False) -> StoredResponse | None:
        """The record stored under ``response_id``, or None if ``data`` is not one (a
        record of another version, or damage: treated as absent, never as a 500).
        Integers beyond 64 bits are orjson's floats unless ``exact``: the writes that
        follow look at ``source`` again when they show one (:meth:`exact`). Decoded in
        one go: :meth:`decode_in_turns` for a large record."""
        parts = split_record(data)
        try:
            if parts is None:  # the earlier layout: one JSON document
                value = orjson.loads(data)
                if exact and isinstance(value, dict):
                    value = with_exact_integers(data, value)
                return cls._checked(response_id, value, data)
            opened = _opened(*parts, exact)
            if opened is None:
                return None
            value, slices = opened
            read = read_exactly if exact else orjson.loads
            value["input"] = [item for piece in slices for item in read(piece)]
        except orjson.JSONDecodeError:
            return None
        return cls._checked(response_id, value, data)

    @classmethod
    async def decode_in_turns(
        cls, response_id: str, data: bytes, exact: bool = False
    ) -> StoredResponse | None:
        """:meth:`decode`, the conversation a slice per turn of the event loop
        (:mod:`gateway.responses.record_layout`)."""
        parts = split_record(data)
        if parts is None:
            return cls.decode(response_id, data, exact)
        try:
            if exact:  # its own turn: a header of 85,000 ids takes the parser ~10 ms
                await asyncio.sleep(0)
            opened = _opened(*parts, exact)
            if opened is None:
                return None
            value, slices = opened
            value["input"] = await read_sliced(slices, exact)
        except orjson.JSONDecodeError:
            return None
        return cls._checked(response_id, value, data)

    @classmethod
    def _checked(cls, response_id: str, value: Any, data: bytes) -> StoredResponse | None:
        if not isinstance(value, dict):
            return None
        owner, response, items = value.get("owner"), value.get("response"), value.get("input")
        ids = value.get("input_ids")
        if not isinstance(owner, str) or not isinstance(response, dict):
            return None
        if not isinstance(items, list) or not isinstance(ids, list) or len(ids) != len(items):
            return None
        if not all(isinstance(i, str) for i in ids):
            return None
        return cls(response_id, owner, response, items, ids, data)

    @property
    def output(self) -> list[Any]:
        """The response's output items (empty when it has none)."""
        output = self.response.get("output")
        return output if isinstance(output, list) else []


def encode_record(
    owner: str, response: dict[str, Any], input_items: bytes, ids: Any, cuts: list[int]
) -> bytes:
    """A record as stored (:mod:`gateway.responses.record_layout`): ``input_items`` the
    conversation encoded, cut at ``cuts`` (:func:`encoded_in_slices`: once, for the
    engine and the record); ``ids`` a list, or an :class:`orjson.Fragment` of one
    encoded (kept so while the engine answers). Raises ``orjson.JSONEncodeError`` (a
    ``TypeError``) for what orjson cannot write."""
    fields = {"owner": owner, "response": response, "input_ids": ids}
    return write_record(fields, input_items, cuts)


def _opened(
    header: memoryview, conversation: memoryview, exact: bool
) -> tuple[dict[str, Any], list[memoryview]] | None:
    """A sliced record's header fields (integers beyond 64 bits as written when
    ``exact``: a follow-up, a retrieval sends them as they came) and its conversation's
    slices; None when they are not a record's. Raises ``orjson.JSONDecodeError``."""
    value = read_exactly(header) if exact else orjson.loads(header)
    if not isinstance(value, dict):
        return None
    slices = slices_of(conversation, value.get("input_slices"))
    return None if slices is None else (value, slices)


class ResponseStore(Protocol):
    """Stored responses by id, each for ``ttl_s`` seconds, and the bytes each owner's
    live records take (for ``responses.max_bytes_per_key``). Failures to reach the
    store raise :class:`gateway.errors.StoreUnavailable`."""

    async def get(self, response_id: str) -> bytes | None:
        """The encoded record, or None when there is none (or it expired)."""
        ...

    async def put(
        self, response_id: str, record: bytes, ttl_s: int, owner: str, quota: int | None
    ) -> bool:
        """Keep ``record`` unless ``owner``'s live records take ``quota`` bytes or more
        already (None: no quota); whether it was kept."""
        ...

    async def owns(self, response_id: str, owner: str) -> bool:
        """Whether ``owner`` stored a record under ``response_id`` that still lives:
        answered from ``owner``'s own bookkeeping, never by reading the record, so
        another key's id costs what an unknown one does (no timing difference, no
        8 MiB read on behalf of a key that may not see it)."""
        ...

    async def delete(self, response_id: str, owner: str) -> bool:
        """Remove the record (``owner``'s); whether there was one."""
        ...

    async def usage(self, owner: str) -> int:
        """The bytes ``owner``'s live records take."""
        ...
