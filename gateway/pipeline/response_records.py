"""The Responses API's stored records: loading one, keeping a finished response, and
each key's quota of stored bytes (``responses.max_bytes_per_key``).

A key at its quota gets 429 ``insufficient_quota`` for a request that would store,
once its rate limits admit it (a key over them is refused without a store call) and
before anything is sent to an engine: the admission is settled as nothing used (no
tokens charged, its concurrency slot free; the request counts against ``rpm``, as
any admitted request does). ``store: false`` still works. The
store checks the quota again when it keeps a record (requests made meanwhile may
have reached it): a record it refuses then, like one over ``max_stored_bytes``, one
that cannot be encoded (a body at the accepted nesting depth whose fields the engine
echoed: the record nests them a level deeper than JSON may go) or one the store
could not be reached for, is logged and skipped; the client still has
its answer, which it cannot retrieve or continue later.

A follow-up loads its previous record (up to ``responses.max_stored_bytes``) before
its admission can be decided (the conversation is what it is priced by), so a key
refused for its ``rpm`` or ``max_concurrent`` would still have every one of its
requests read and decode a record: hundreds at once took hundreds of MiB of the
gateway's memory. :class:`OwnerGate` lets at most :data:`LOADS_PER_KEY` follow-ups
of one key load at once in a process, each until its admission is decided; the
others wait their turn, holding nothing but their body. Across keys (and for
retrievals), every decoded record counts against the worker's
:class:`gateway.pipeline.record_budget.ByteBudget` while it is held
(:meth:`ResponseRecords.loaded`).

A large record (over :data:`SLICED_BYTES`) is decoded a slice per turn of the event
loop (:mod:`gateway.responses.record_layout`: orjson holds the GIL, so a thread would
stall the loop all the same), and one at a time per worker: decoded side by side,
each keeps its partly decoded objects alive while the others advance, which raised
a test's peak memory by 30% (6.7 to 8.7 MB) when an earlier change decoded them in
threads side by side; in turn, their peak is what it was on the loop in one piece.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson

from gateway.config.responses import ResponsesSettings
from gateway.errors import (
    DependencyUnavailableError,
    GatewayError,
    QuotaExceededError,
    StoreUnavailable,
    retry_after,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.record_budget import LOADED_RECORDS, ByteBudget
from gateway.pipeline.response_turns import Turn
from gateway.responses.encoding import written_exactly
from gateway.responses.store import ResponseStore, StoredResponse, encode_record

log = logging.getLogger("vgate.responses")

RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a stored response's id may look like (anything else is not looked up)."""

SLICED_BYTES = 64 * 1024
"""Records above this size are decoded a slice per turn of the event loop (below it,
in one piece: well under a millisecond)."""

LOADS_PER_KEY = 4
"""Follow-ups of one key that may load their previous record at once, per process."""


class _Turns:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0


class OwnerGate:
    """At most ``limit`` holders per owner at once (``async with gate.held(owner)``);
    the others wait in turn. An owner with no holder and no waiter takes no memory."""

    __slots__ = ("_limit", "_turns")

    def __init__(self, limit: int = LOADS_PER_KEY) -> None:
        self._limit = limit
        self._turns: dict[str, _Turns] = {}

    def held(self, owner: str) -> _Held:
        return _Held(self, owner)

    async def enter(self, owner: str) -> None:
        turns = self._turns.get(owner)
        if turns is None:
            turns = self._turns[owner] = _Turns(self._limit)
        turns.users += 1
        try:
            await turns.semaphore.acquire()
        except BaseException:  # cancelled while waiting: no longer a user
            self._leave(owner, turns)
            raise

    def exit(self, owner: str) -> None:
        turns = self._turns[owner]
        turns.semaphore.release()
        self._leave(owner, turns)

    def _leave(self, owner: str, turns: _Turns) -> None:
        turns.users -= 1
        if turns.users == 0:
            del self._turns[owner]


class _Held:
    """One turn of :class:`OwnerGate` as an ``async with`` block."""

    __slots__ = ("_gate", "_owner")

    def __init__(self, gate: OwnerGate, owner: str) -> None:
        self._gate = gate
        self._owner = owner

    async def __aenter__(self) -> None:
        await self._gate.enter(self._owner)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._gate.exit(self._owner)


class ResponseRecords:
    """The store, as the Responses service uses it: errors in OpenAI's form."""

    def __init__(
        self, store: ResponseStore, settings: ResponsesSettings, metrics: GatewayMetrics
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self.loading = OwnerGate()
        """Follow-ups loading their previous record, by key (see the module docstring)."""
        self.budget = ByteBudget(LOADED_RECORDS * settings.max_stored_bytes)
        """The stored bytes this worker's decoded records come from, at once."""
        self.decoding = asyncio.Lock()
        """Held while a large record is decoded a slice at a time (one at a time)."""

    def loaded(self, response_id: str, owner: str, missing: GatewayError) -> Loaded:
        """``async with records.loaded(...) as record``: ``owner``'s record (None:
        ``owner`` has none under that id, whether another key has one or nobody does:
        both are answered alike, and another key's record is never read); ``missing``
        for an id of another form. The record counts against :attr:`budget` until the
        block ends: nothing of it may be kept beyond."""
        return Loaded(self, response_id, owner, missing)

    async def read(self, response_id: str, owner: str, missing: GatewayError) -> bytes | None:
        """The encoded record (see :meth:`loaded`), not yet decoded."""
        if not await self.owned(response_id, owner, missing):
            return None
        try:
            return await self._store.get(response_id)
        except StoreUnavailable:
            raise self._unavailable() from None

    async def owned(self, response_id: str, owner: str, missing: GatewayError) -> bool:
        """Whether ``owner`` has a record under ``response_id`` (``missing`` for an id of
        another form), from the owner's bookkeeping: the record is neither read nor
        decoded (a delete or a cancel needs no more)."""
        if RESPONSE_ID.fullmatch(response_id) is None:
            raise missing
        try:
            return await self._store.owns(response_id, owner)
        except StoreUnavailable:
            raise self._unavailable() from None

    async def delete(self, response_id: str, owner: str) -> bool:
        """Whether there was a record to delete (of two deletes at once, one has)."""
        try:
            return await self._store.delete(response_id, owner)
        except StoreUnavailable:
            raise self._unavailable() from None

    async def check_quota(self, owner: str) -> None:
        """429 ``insufficient_quota`` when ``owner``'s stored responses take
        ``responses.max_bytes_per_key`` or more."""
        quota = self._settings.max_bytes_per_key
        if quota is None:
            return
        try:
            used = await self._store.usage(owner)
        except StoreUnavailable:  # answered all the same; the store's put checks again
            self._metrics.redis_errors.labels("responses").inc()
            return
        if used >= quota:
            raise QuotaExceededError(
                f"The stored responses of key '{owner}' take {used} bytes, its limit "
                f"(responses.max_bytes_per_key: {quota}). Delete some "
                "(DELETE /v1/responses/{id}), wait for them to expire, or send "
                '"store": false.',
                param="store",
            )

    async def save(self, response_id: str, owner: str, data: bytes) -> None:
        """Keep the encoded record ``data`` for ``responses.ttl_s`` (see the module
        docstring for when it is skipped)."""
        settings = self._settings
        if len(data) > settings.max_stored_bytes:
            log.warning(
                "response %s not stored: %d bytes over responses.max_stored_bytes (%d)",
                *(response_id, len(data), settings.max_stored_bytes),
            )
            return
        quota = settings.max_bytes_per_key
        try:
            kept = await self._store.put(response_id, data, settings.ttl_s, owner, quota)
        except StoreUnavailable as exc:
            self._metrics.redis_errors.labels("responses").inc()
            log.warning("response %s not stored: %s", response_id, exc)
            return
        if not kept:
            log.warning(
                "response %s not stored: key '%s' is at responses.max_bytes_per_key (%s)",
                *(response_id, owner, quota),
            )

    def _unavailable(self) -> DependencyUnavailableError:
        self._metrics.redis_errors.labels("responses").inc()
        return DependencyUnavailableError(
            "Stored responses cannot be read right now; try again shortly.",
            code="response_store_unavailable",
            headers=retry_after(1),
        )


class Loaded:
    """One :meth:`ResponseRecords.loaded` block: the record read, its bytes held of the
    budget, decoded, released at the end."""

    __slots__ = ("_held", "_id", "_missing", "_owner", "_records")

    def __init__(
        self, records: ResponseRecords, response_id: str, owner: str, missing: GatewayError
    ) -> None:
        self._records = records
        self._id = response_id
        self._owner = owner
        self._missing = missing
        self._held = 0

    async def __aenter__(self) -> StoredResponse | None:
        data = await self._records.read(self._id, self._owner, self._missing)
        if data is None:
            return None
        records = self._records
        self._held = await records.budget.acquire(len(data))
        try:
            if len(data) <= SLICED_BYTES:
                return StoredResponse.decode(self._id, data)
            async with records.decoding:  # one at a time: see the module docstring
                return await StoredResponse.decode_in_turns(self._id, data)
        except BaseException:
            self._release()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, 0
        if held:
            self._records.budget.release(held)


class Keeper:
    """Stores a finished response with the conversation that produced it, under the id
    the gateway made for it (``response_id``, the engine's ``request_id``). A response
    the engine named otherwise is not stored: the client saw the engine's id, which
    must not name a record the engine chose (another key's, say), and the gateway's
    id would be one the client never saw. The conversation is kept encoded
    (:func:`gateway.responses.encoding.encoded_items`), not as the objects it was
    decoded to, for as long as the engine answers, and so are its items' ids (the
    ``turn``'s)."""

    __slots__ = ("_id", "_ids", "_owner", "_records", "_turn")

    def __init__(self, records: ResponseRecords, owner: str, turn: Turn, response_id: str) -> None:
        self._records = records
        self._owner = owner
        self._turn = turn
        self._ids = orjson.Fragment(turn.item_ids)
        self._id = response_id

    async def __call__(self, response: dict[str, Any], exact: Callable[[], dict[str, Any]]) -> None:
        """Store ``response``; ``exact`` reads it again with its integers beyond 64
        bits as the engine wrote them, called only when the record shows a float that
        may be one (:func:`gateway.responses.encoding.written_exactly`)."""
        given = response.get("id")
        if given != self._id:
            shown = given[:64] if isinstance(given, str) else type(given).__name__
            log.warning(
                "engine response id %r is not the %s asked for: not stored", shown, self._id
            )
            return
        try:
            data = written_exactly(self._encode, response, exact)
        except TypeError as exc:  # orjson.JSONEncodeError: e.g. nested one level too deep
            log.warning("response %s not stored: it cannot be encoded: %s", self._id, exc)
            return
        await self._records.save(self._id, self._owner, data)

    def _encode(self, response: Any) -> bytes:
        turn = self._turn
        return encode_record(self._owner, response, turn.items, self._ids, turn.cuts)
