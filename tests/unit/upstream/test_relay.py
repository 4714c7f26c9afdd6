"""The SSE relay: batches pass through in order and through each tap in turn; the
first chunk is timed on the injected clock; ``[DONE]`` completes the stream and
runs ``on_done`` once, before the client gets it; an engine that stops early or
fails mid-stream raises, and the outcome records why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.upstream.fake import FakeStream, Scripted, sse
from gateway.upstream.relay import DONE_EVENT, BatchTap, StreamOutcome, relay_events

ONE = b'data: {"n": 1}\n\n'
TWO = b'data: {"n": 2}\n\n'
THREE = sse({"n": 3})  # ends with [DONE]


class Ticks:
    """A clock that advances by one on every reading."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += 1
        return self.now


class Rewrite:
    """A tap that replaces ``old`` by ``new`` and notes each batch it saw."""

    def __init__(self, old: bytes, new: bytes) -> None:
        self.old, self.new = old, new
        self.seen: list[bytes] = []

    def inspect(self, batch: bytes) -> bytes:
        self.seen.append(batch)
        return batch.replace(self.old, self.new)


class Drop:
    """A tap that swallows every batch equal to ``victim``."""

    def __init__(self, victim: bytes) -> None:
        self.victim = victim

    def inspect(self, batch: bytes) -> bytes:
        return b"" if batch == self.victim else batch


class Failing:
    """An event source that sends ``before`` and then fails with ``error``."""

    def __init__(self, before: Sequence[bytes], error: GatewayError) -> None:
        self.before = before
        self.error = error
        self.deadline: float | None = None
        self._sent = 0

    async def prime(self) -> None:
        return None

    async def batches(self) -> AsyncIterator[bytes]:
        for batch in self.before:
            yield batch
        raise self.error

    async def next_batch(self) -> bytes | None:
        if self._sent < len(self.before):
            self._sent += 1
            return self.before[self._sent - 1]
        raise self.error

    def close(self) -> None:
        return None


def scripted(*events: bytes) -> FakeStream:
    return FakeStream(Scripted(events=events), set())


async def relay(
    stream: FakeStream | Failing,
    outcome: StreamOutcome,
    clock: Callable[[], float] | None = None,
    taps: Sequence[BatchTap] = (),
    on_done: Callable[[], None] | None = None,
) -> list[bytes]:
    events = relay_events(stream, outcome, clock or Ticks(), taps, on_done)
    return [batch async for batch in events]


async def test_batches_pass_through_in_order() -> None:
    outcome = StreamOutcome()
    assert await relay(scripted(ONE, TWO, THREE), outcome) == [ONE, TWO, THREE]
    assert outcome.completed and outcome.error is None


async def test_each_tap_sees_what_the_previous_one_returned() -> None:
    first, second = Rewrite(b'"n"', b'"m"'), Rewrite(b'"m"', b'"k"')
    out = await relay(scripted(ONE, THREE), StreamOutcome(), taps=(first, second))
    assert out == [b'data: {"k": 1}\n\n', sse({"k": 3})]
    assert first.seen == [ONE, THREE]
    assert second.seen == [b'data: {"m": 1}\n\n', sse({"m": 3})]


async def test_the_first_chunk_is_timed_once_on_the_injected_clock() -> None:
    clock = Ticks(start=100.0)
    outcome = StreamOutcome()
    await relay(scripted(ONE, TWO, THREE), outcome, clock=clock)
    assert outcome.first_chunk_at == 101.0
    assert clock.readings == 1


async def test_on_done_runs_once_before_the_last_batch_is_yielded() -> None:
    outcome = StreamOutcome()
    calls: list[bool] = []
    received: list[bytes] = []

    def done() -> None:
        calls.append(True)

    events = relay_events(scripted(ONE, THREE), outcome, Ticks(), on_done=done)
    async for batch in events:
        if batch.endswith(DONE_EVENT):
            assert calls == [True] and outcome.completed  # already, when the client gets it
        else:
            assert calls == [] and not outcome.completed
        received.append(batch)
    assert calls == [True]
    assert received == [ONE, THREE]


async def test_a_stream_that_ends_without_done_is_an_error() -> None:
    outcome = StreamOutcome()
    received: list[bytes] = []
    with pytest.raises(UpstreamError, match="before it was complete") as caught:
        async for batch in relay_events(scripted(ONE, TWO), outcome, Ticks()):
            received.append(batch)
    assert received == [ONE, TWO]  # what came is relayed first
    assert outcome.error is caught.value
    assert not outcome.completed


async def test_an_empty_stream_is_an_error() -> None:
    outcome = StreamOutcome()
    with pytest.raises(UpstreamError):
        await relay(scripted(), outcome)
    assert outcome.error is not None and outcome.first_chunk_at is None


async def test_a_mid_stream_failure_is_reraised_and_recorded() -> None:
    error = UpstreamTimeoutError("the engine sent nothing for idle_s = 1 s")
    outcome = StreamOutcome()
    received: list[bytes] = []
    with pytest.raises(UpstreamTimeoutError) as caught:
        async for batch in relay_events(Failing([ONE], error), outcome, Ticks()):
            received.append(batch)
    assert caught.value is error
    assert outcome.error is error and not outcome.completed
    assert received == [ONE]


async def test_a_fake_stream_that_breaks_is_recorded() -> None:
    outcome = StreamOutcome()
    stream = FakeStream(Scripted(events=(ONE, TWO, THREE), break_after=2), set())
    with pytest.raises(UpstreamError, match="closed the connection mid-answer") as caught:
        await relay(stream, outcome)
    assert outcome.error is caught.value and not outcome.completed


async def test_batches_emptied_by_a_tap_are_skipped() -> None:
    outcome = StreamOutcome()
    out = await relay(scripted(ONE, TWO, THREE), outcome, taps=(Drop(TWO),))
    assert out == [ONE, THREE]
    assert outcome.completed


async def test_an_emptied_batch_after_done_leaves_the_stream_complete() -> None:
    outcome = StreamOutcome()
    done_calls: list[bool] = []
    out = await relay(
        scripted(THREE, TWO), outcome, taps=(Drop(TWO),), on_done=lambda: done_calls.append(True)
    )
    assert out == [THREE]
    assert outcome.completed and outcome.error is None
    assert done_calls == [True]


async def test_events_after_done_are_dropped_and_fail_nothing() -> None:
    outcome = StreamOutcome()
    assert await relay(scripted(ONE, THREE, TWO), outcome) == [ONE, THREE]
    assert outcome.completed and outcome.error is None


async def test_a_batch_is_cut_after_its_done_event() -> None:
    outcome = StreamOutcome()
    assert await relay(scripted(ONE, DONE_EVENT + TWO + DONE_EVENT), outcome) == [ONE, DONE_EVENT]
    assert outcome.completed and outcome.error is None


async def test_done_without_the_space_counts_and_is_relayed_in_the_usual_spelling() -> None:
    outcome = StreamOutcome()
    out = await relay(scripted(ONE + b"data:[DONE]\n\n"), outcome)
    assert out == [ONE + DONE_EVENT]
    assert outcome.completed and outcome.error is None


async def test_a_delta_holding_the_word_done_is_text() -> None:
    text = b'data: {"content": "data: [DONE]"}\n\n'
    outcome = StreamOutcome()
    assert await relay(scripted(text, THREE), outcome) == [text, THREE]
    assert outcome.completed


async def test_a_failure_after_done_is_no_failure() -> None:
    error = UpstreamTimeoutError("the engine sent nothing for idle_s = 1 s")
    outcome = StreamOutcome()
    assert await relay(Failing([ONE, THREE], error), outcome) == [ONE, THREE]
    assert outcome.completed and outcome.error is None


NOT_UTF8_EVENT = b'data: {"choices": [{"delta": {"content": "caf\xc3"}}]}\n\n'
"""An event whose data is not UTF-8 (the first byte of a two-byte character, alone)."""
UTF8_EVENT = sse({"n": "café ☕"}, done=False)


async def test_an_event_that_is_not_utf8_ends_the_stream_with_an_error() -> None:
    """The events before it (in its batch too) are relayed and seen by the taps; it and
    all after it are not, and the stream is not complete (so nothing is cached). Before,
    it was relayed as it came, and the stream kept and replayed from the cache."""
    outcome = StreamOutcome()
    tap = Rewrite(b"nothing", b"nothing")
    received: list[bytes] = []
    with pytest.raises(UpstreamError, match="not valid UTF-8") as caught:
        stream = scripted(UTF8_EVENT, ONE + NOT_UTF8_EVENT + TWO, THREE)
        async for batch in relay_events(stream, outcome, Ticks(), (tap,)):
            received.append(batch)
    assert received == [UTF8_EVENT, ONE]
    assert tap.seen == [UTF8_EVENT, ONE]
    assert outcome.error is caught.value and not outcome.completed


async def test_an_event_that_is_not_utf8_before_done_in_its_batch_fails_the_stream() -> None:
    outcome = StreamOutcome()
    calls: list[bool] = []
    with pytest.raises(UpstreamError, match="not valid UTF-8"):
        await relay(scripted(NOT_UTF8_EVENT + THREE), outcome, on_done=lambda: calls.append(True))
    assert calls == [] and not outcome.completed


async def test_an_event_that_is_not_utf8_after_done_is_dropped_and_fails_nothing() -> None:
    outcome = StreamOutcome()
    assert await relay(scripted(UTF8_EVENT, THREE + NOT_UTF8_EVENT), outcome) == [
        UTF8_EVENT,
        THREE,
    ]
    assert outcome.completed and outcome.error is None
