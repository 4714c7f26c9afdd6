"""What an engine's circuit breaker hears of answers that are not plain failures, and
which of them go to another engine (bug hunt, hostile engines):

- a stream is judged by how it ends, not by its first event: an engine that starts
  every stream and then breaks off (or stalls past the read deadline) is taken out of
  rotation; before, each first event counted as a success and reset its count, so the
  breaker never opened. A stream that completes, or whose client leaves, or that the
  engine ends with an error event of its own (a prompt too long) does not count against it;
- an engine that answered, with something the gateway cannot relay (a stream that ends
  before any event, a 2xx labelled JSON that is not JSON), gets a 502 counted against
  it, and the request is not sent to another engine (it may have generated already);
  before, an empty stream was "unreachable" (503, failover, the engine marked down).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import orjson
import pytest

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.pipeline.answer_checks import PARSED_BYTES, checked_json
from gateway.pool.engine_pool import BreakerPolicy
from gateway.upstream.fake import Scripted, sse
from gateway.upstream.relay import StreamOutcome, relay_events
from gateway.upstream.transport import UpstreamReply
from tests.unit.pipeline.test_forwarding import MODEL, A, B, Rig, engines

BREAKER = BreakerPolicy(failures=2, cooldown_s=10)
FIRST = sse({"n": 1}, done=False)
CONTEXT_ERROR = b'data: {"error": {"message": "maximum context length is 8", "code": 400}}\n\n'


async def relayed(rig: Rig) -> tuple[str, StreamOutcome]:
    """One stream through the forwarder and the relay to its end (an engine's failure
    ends it as the client's edge ends it), then the request closed."""
    exchange = rig.exchange()
    try:
        url, stream = await rig.forwarder.open_stream(exchange, rig.attempt)
        outcome = exchange.outcome = StreamOutcome()
        try:
            async for _ in relay_events(stream, outcome, exchange.clock):
                pass
        except GatewayError:
            pass
    finally:
        exchange.close()
    return url, outcome


async def test_streams_that_break_off_after_their_first_event_open_the_breaker() -> None:
    rig = Rig(engines(a=Scripted(events=(FIRST, FIRST), break_after=1)), breaker=BREAKER)
    url, outcome = await relayed(rig)
    assert url == A and isinstance(outcome.error, UpstreamError)
    assert not rig.pool.breaker_open(A)
    await relayed(rig)  # its second stream in a row that broke: failing, not answering
    assert rig.pool.breaker_open(A)
    assert (await relayed(rig))[0] == B  # out of rotation


async def test_a_stream_without_done_counts_against_its_engine() -> None:
    rig = Rig(engines(a=Scripted(events=(FIRST,))), breaker=BREAKER)  # its body just ends
    for _ in range(2):
        await relayed(rig)
    assert rig.pool.breaker_open(A)


async def test_completed_streams_reset_the_count() -> None:
    breaks = Scripted(events=(FIRST, FIRST), break_after=1)
    rig = Rig(engines(a=breaks), breaker=BREAKER)
    await relayed(rig)
    rig.upstream.handler = engines()
    assert (await relayed(rig))[1].completed
    rig.upstream.handler = engines(a=breaks)
    await relayed(rig)  # one failure again, not two
    assert not rig.pool.breaker_open(A)


async def test_an_error_event_of_the_engines_own_is_no_failure() -> None:
    """Even when it ends its stream without ``[DONE]`` after it."""
    refuses = Scripted(events=(CONTEXT_ERROR,))
    rig = Rig(engines(a=refuses), breaker=BreakerPolicy(failures=1, cooldown_s=10))
    _, outcome = await relayed(rig)
    assert outcome.engine_error and outcome.error is not None
    assert not rig.pool.breaker_open(A)


SERVER_ERROR = b'data: {"error": {"message": "EngineDeadError", "code": 500}}\n\n'


@pytest.mark.parametrize("done", [True, False], ids=["then DONE", "then the end"])
async def test_an_error_event_of_the_engines_own_with_a_5xx_code_is_its_failure(
    done: bool,
) -> None:
    """The engine's own server error, sent as an event (hunt: an engine failing every
    stream that way never left rotation; the same error as an HTTP 500 would have)."""
    events = (FIRST, SERVER_ERROR, b"data: [DONE]\n\n") if done else (FIRST, SERVER_ERROR)
    rig = Rig(engines(a=Scripted(events=events)), breaker=BreakerPolicy(2, 10))
    _, outcome = await relayed(rig)
    assert outcome.engine_error_status == 500 and not rig.pool.breaker_open(A)
    await relayed(rig)  # the second in a row
    assert rig.pool.breaker_open(A)


async def test_a_client_that_leaves_is_no_failure() -> None:
    rig = Rig(engines(a=Scripted(events=(FIRST, FIRST))), breaker=BreakerPolicy(1, 10))
    exchange = rig.exchange()
    _, stream = await rig.forwarder.open_stream(exchange, rig.attempt)
    exchange.outcome = StreamOutcome()
    events = relay_events(stream, exchange.outcome, exchange.clock)
    assert isinstance(events, AsyncGenerator)
    await anext(events)
    await events.aclose()  # the client went away
    exchange.close()
    assert not rig.pool.breaker_open(A)


@pytest.mark.parametrize(
    ("error", "completed", "engine_error", "failed"),
    [
        (UpstreamError("closed before the answer ended"), False, False, True),
        (UpstreamTimeoutError("idle_s passed"), False, False, True),
        (None, False, False, False),  # the client left
        (None, True, False, False),
        (UpstreamError("after [DONE]"), True, False, False),
        (UpstreamError("closed after its error event"), False, True, False),
        (GatewayError("the gateway's own"), False, False, False),
    ],
)
def test_which_endings_are_the_engines_failure(
    error: GatewayError | None, completed: bool, engine_error: bool, failed: bool
) -> None:
    outcome = StreamOutcome()
    outcome.error, outcome.completed, outcome.engine_error = error, completed, engine_error
    assert outcome.engine_failed() is failed


async def test_a_stream_that_ends_before_its_first_event_is_a_502_not_a_failover() -> None:
    rig = Rig(engines(a=Scripted(events=())), breaker=BreakerPolicy(failures=1, cooldown_s=10))
    with pytest.raises(UpstreamError, match="stream ended before its first event") as caught:
        await rig.stream()
    assert caught.value.status == 502
    assert rig.tried() == [A]
    assert rig.pool.health()[MODEL][A]  # it answered: not marked down
    assert rig.pool.breaker_open(A)
    assert rig.in_flight() == [0, 0] and rig.upstream.open_streams == set()


async def test_a_2xx_labelled_json_that_is_not_json_is_a_502_not_a_failover() -> None:
    rig = Rig(engines(a=Scripted(body=b'{"id": "cut sh')), breaker=BreakerPolicy(1, 10))
    with pytest.raises(UpstreamError, match="not valid JSON"):
        await rig.complete()
    assert rig.tried() == [A]
    assert rig.pool.breaker_open(A)
    assert rig.in_flight() == [0, 0]


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b'{"ok": true}', False),
        (b"[1, 2]", False),
        (b'{"ok": tr', True),
        (b"<html>502</html>", True),
        (b"", True),
        ('{"text": "é"}'.encode("latin-1"), True),  # not UTF-8
        (b" " + orjson.dumps({"x": "y" * PARSED_BYTES}) + b"\n", False),  # ends checked only
        (orjson.dumps({"x": "y" * PARSED_BYTES})[:-1], True),
    ],
)
def test_which_json_answers_are_refused(body: bytes, refused: bool) -> None:
    reply = UpstreamReply(200, "application/json", body)
    assert (checked_json(reply) is not None) is refused
    if not refused and len(body) <= PARSED_BYTES:
        assert reply.answer == orjson.loads(body)  # kept: nothing parses it again
