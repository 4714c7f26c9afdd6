"""A stream whose client left says nothing about its engine: closing it late must not
record a success that wipes out the failures counted meanwhile (review: an engine whose
clients gave up on it kept its breaker closed)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from gateway.pool.engine_pool import BreakerPolicy
from gateway.upstream.fake import Scripted, sse
from gateway.upstream.relay import StreamOutcome, relay_events
from tests.unit.pipeline.test_forwarding import A, Rig, engines
from tests.unit.pipeline.test_forwarding_verdicts import relayed

FIRST = sse({"n": 1}, done=False)


async def test_a_client_left_stream_closing_late_resets_the_failure_count() -> None:
    rig = Rig(engines(a=Scripted(events=(FIRST, FIRST))), breaker=BreakerPolicy(2, 10))
    # A long stream started earlier; its client will leave mid-stream.
    old = rig.exchange()
    _, stream = await rig.forwarder.open_stream(old, rig.attempt)
    old.outcome = StreamOutcome()
    events = relay_events(stream, old.outcome, old.clock)
    assert isinstance(events, AsyncGenerator)
    await anext(events)
    # Meanwhile the engine starts breaking off its streams: one failure.
    rig.upstream.handler = engines(a=Scripted(events=(FIRST, FIRST), break_after=1))
    await relayed(rig)
    # The old stream's client leaves: no evidence about the engine either way...
    await events.aclose()
    old.close()
    # ...yet one more broken stream should now open the breaker (2 in a row).
    await relayed(rig)
    assert rig.pool.breaker_open(A), "the abandoned stream's close recorded a success"
