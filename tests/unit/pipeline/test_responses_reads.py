"""Reading stored responses (retrieve, input items, delete, cancel): each counts
against its key's request rate and concurrency; another key's record is never read
(an id of another key's costs what an unknown one does); and a stream's ``error``
event carries the ``sequence_number`` after the last event relayed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.backends.memory.responses import MemoryResponseStore
from gateway.config.responses import ResponsesSettings
from gateway.errors import RateLimitError, UpstreamError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.response_events import (
    FinalResponseTap,
    SequenceMark,
    last_sequence_number,
    relay_response_events,
)
from gateway.pipeline.response_records import ResponseRecords
from gateway.pipeline.responses import NotCancellableError
from gateway.responses.conversation import ResponseNotFoundError
from gateway.responses.store import StoredResponse
from gateway.upstream.relay import StreamOutcome
from tests.unit.pipeline.responses_world import KEY, MODEL, create_answer, responses_world


class CountingStore(MemoryResponseStore):
    """Counts the records read."""

    reads = 0

    async def get(self, response_id: str) -> bytes | None:
        self.reads += 1
        return await super().get(response_id)


async def test_another_keys_record_is_never_read() -> None:
    store = CountingStore(1 << 20)
    records = ResponseRecords(store, ResponsesSettings(), GatewayMetrics())
    record = StoredResponse("resp_a", "alice", {"id": "resp_a"}, [], [])
    assert await store.put("resp_a", record.encode(), 60, "alice", None)
    missing = ResponseNotFoundError("resp_a")
    async with records.loaded("resp_a", "bob", missing) as loaded:
        assert loaded is None
    async with records.loaded("resp_unknown", "bob", missing) as loaded:
        assert loaded is None
    assert store.reads == 0  # neither read a record: both cost one look at bob's own
    async with records.loaded("resp_a", "alice", missing) as loaded:
        assert loaded is not None and loaded.owner == "alice" and store.reads == 1


async def test_delete_and_cancel_never_read_the_record() -> None:
    """Delete and cancel read and decoded the whole record (up to 8 MiB) only to learn
    its owner; the key's own bookkeeping (``owns``) says as much."""
    store = CountingStore(1 << 24)
    world = responses_world(store=store)
    answer = await create_answer(world, {"model": MODEL, "input": "hi"})
    principal = await world.service.caller(f"Bearer {KEY}")
    with pytest.raises(NotCancellableError):
        await world.service.cancel(answer["id"], principal)
    with pytest.raises(ResponseNotFoundError):
        await world.service.cancel("resp_unknown", principal)
    deleted = await world.service.delete(answer["id"], principal)
    assert orjson.loads(deleted.body)["deleted"] is True
    with pytest.raises(ResponseNotFoundError):
        await world.service.delete(answer["id"], principal)
    assert store.reads == 0  # unfixed: 2 (one record read and decoded by each)
    assert await store.get(answer["id"]) is None


async def test_memory_store_owns_only_its_owners_live_records() -> None:
    now = [0.0]
    store = MemoryResponseStore(1 << 20, clock=lambda: now[0])
    assert await store.put("r1", b"{}", 10, "alice", None)
    assert await store.owns("r1", "alice") and not await store.owns("r1", "bob")
    assert not await store.owns("r2", "alice")
    now[0] = 11.0
    assert not await store.owns("r1", "alice")  # expired


async def test_reading_stored_responses_counts_against_the_keys_rpm() -> None:
    world = responses_world(key_limits={"rpm": 4})
    answer = await create_answer(world, {"model": MODEL, "input": "hi"})
    principal = await world.service.caller(f"Bearer {KEY}")
    await world.service.retrieve(answer["id"], principal)
    await world.service.input_items(answer["id"], principal, {})
    with pytest.raises(ResponseNotFoundError):  # not found: charged all the same
        await world.service.retrieve("resp_nothing", principal)
    with pytest.raises(RateLimitError) as refused:  # the create and three reads: 4 rpm
        await world.service.retrieve(answer["id"], principal)
    assert refused.value.status == 429
    with pytest.raises(RateLimitError):
        await world.service.delete(answer["id"], principal)
    assert await world.store.get(answer["id"]) is not None  # refused: nothing deleted


async def test_reads_hold_a_concurrency_slot_while_they_run() -> None:
    world = responses_world(key_limits={"max_concurrent": 1})
    answer = await create_answer(world, {"model": MODEL, "input": "hi"})
    principal = await world.service.caller(f"Bearer {KEY}")
    first = await world.service.retrieve(answer["id"], principal)  # settled: slot freed
    second = await world.service.retrieve(answer["id"], principal)
    assert first.body == second.body


class _Source:
    deadline: float | None = None

    def __init__(self, batches: list[bytes], broken: bool = True) -> None:
        self._batches = batches
        self._broken = broken  # after the batches: the engine breaks off, or ends

    async def prime(self) -> None:
        return None

    async def batches(self) -> AsyncIterator[bytes]:
        while (batch := await self.next_batch()) is not None:
            yield batch

    async def next_batch(self) -> bytes | None:
        if self._batches:
            return self._batches.pop(0)
        if not self._broken:
            return None
        raise UpstreamError("engine stream broke")

    def close(self) -> None:
        return None


def _event(kind: str, sequence: int) -> bytes:
    data = orjson.dumps({"type": kind, "sequence_number": sequence, "response": {}})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _error_of(batches: list[bytes]) -> dict[str, object]:
    async def run() -> list[bytes]:
        outcome = StreamOutcome()

        async def on_final(response: dict[str, object]) -> None:
            return None

        events = relay_response_events(
            _Source(batches), outcome, lambda: 1.0, [], FinalResponseTap(), on_final, SequenceMark()
        )
        return [batch async for batch in events]

    out = asyncio.run(run())
    error: dict[str, object] = orjson.loads(out[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error"
    return error


def test_a_streams_error_event_follows_the_last_sequence_number() -> None:
    batches = [_event("response.created", 0), _event("response.in_progress", 1)]
    batches.append(
        _event("response.output_text.delta", 2) + _event("response.output_text.delta", 3)
    )
    assert _error_of(batches)["sequence_number"] == 4
    assert _error_of([])["sequence_number"] == 0  # nothing relayed: the first


def test_last_sequence_number_reads_the_key_only() -> None:
    assert last_sequence_number(b'data: {"sequence_number": 12, "x": 1}\n\n', 3) == 12
    assert last_sequence_number(b'data: {"delta": "\\"sequence_number\\": 99"}\n\n', 3) == 3
    assert last_sequence_number(b"data: {}\n\n", 7) == 7
    assert last_sequence_number(b'{"sequence_number":' + b"9" * 30 + b"}", 5) == 5


def _outcome_of(event: bytes) -> StreamOutcome:
    """How a stream that is only ``event`` (then the connection's end) ended."""

    async def run() -> StreamOutcome:
        outcome = StreamOutcome()
        source = _Source([event], broken=False)

        async def on_final(response: dict[str, object]) -> None:
            return None

        events = relay_response_events(
            source, outcome, lambda: 1.0, [], FinalResponseTap(), on_final, SequenceMark()
        )
        async for _ in events:
            pass
        return outcome

    return asyncio.run(run())


def test_a_stream_the_engine_ends_with_its_own_error_event_is_its_answer() -> None:
    """For the circuit breaker (``StreamOutcome.engine_error``): the engine answered,
    with an error; not a stream it broke off."""
    own_error = orjson.dumps({"type": "error", "code": "x", "message": "no", "param": None})
    outcome = _outcome_of(b"event: error\ndata: " + own_error + b"\n\n")
    assert outcome.engine_error and outcome.error is None and not outcome.engine_failed()
    assert outcome.engine_error_status == 0


@pytest.mark.parametrize("code", [400, 500, 503])
def test_vllms_error_events_status_reaches_the_breaker(code: int) -> None:
    """vLLM's own ``{"error": {..., "code": N}}`` event: its status is kept, and 5xx
    counts against the engine's breaker (:meth:`Exchange.close`), as in a chat stream."""
    error = orjson.dumps({"error": {"message": "boom", "type": "x", "code": code}})
    outcome = _outcome_of(b"data: " + error + b"\n\n")
    assert outcome.engine_error and outcome.error is None
    assert outcome.engine_error_status == code
