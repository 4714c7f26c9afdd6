"""The forwarder against :class:`FakeUpstream`: which failures move a request to
another engine (unreachable, 5xx, a stream that broke before its first event)
and which do not (4xx, timeouts); how many tries it gets (``1 + retries``, and
the retry budget); what the breakers hear; and when the exchange holds the
engine's slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import pytest

from gateway.errors import (
    NoEngineAvailableError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder, RetryBudget
from gateway.pool.engine_pool import BreakerPolicy, EnginePool
from gateway.routing.policies import EndpointView
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.fake import FakeRequest, FakeUpstream, Handler, Scripted, sse
from gateway.upstream.relay import StreamOutcome, relay_events

MODEL = "m"
A, B, C = "http://a", "http://b", "http://c"
PATH = "/v1/chat/completions"
OK = Scripted(body=b'{"ok": true}', events=(sse({"n": 1}),))
DEADLINES = Deadlines(connect_s=1.0, ttft_s=5.0, idle_s=5.0, total_s=None)
BREAKER = BreakerPolicy()


class InOrder:
    """The first candidate: engines are tried in the order they are configured."""

    wants_affinity_key = False

    def choose(self, candidates: Sequence[EndpointView], key: bytes | None = None) -> EndpointView:
        return candidates[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engines(**answers: Scripted) -> Callable[[FakeRequest], Scripted]:
    """A handler answering by engine name (``a=...``); unnamed engines answer OK."""

    def handle(request: FakeRequest) -> Scripted:
        name = request.url.removeprefix("http://").split("/")[0]
        return answers.get(name, OK)

    return handle


class Rig:
    def __init__(
        self,
        handler: Handler,
        urls: Sequence[str] = (A, B),
        retries: int = 1,
        deadlines: Deadlines = DEADLINES,
        budget: RetryBudget | None = None,
        breaker: BreakerPolicy = BREAKER,
    ) -> None:
        self.clock = Clock()
        self.pool = EnginePool({MODEL: urls}, breaker, clock=self.clock)
        self.upstream = FakeUpstream(handler)
        self.metrics = GatewayMetrics()
        own: Mapping[str, Deadlines] = {MODEL: deadlines}
        self.forwarder = Forwarder(
            self.pool, self.upstream, self.metrics, retries, own, DEADLINES, budget=budget
        )
        self.attempt = Attempt(MODEL, PATH, b"{}", "req-1", InOrder(), None)

    def exchange(self) -> Exchange:
        return Exchange(PATH, self.pool, self.metrics)

    async def complete(self) -> str:
        exchange = self.exchange()
        try:
            url, reply = await self.forwarder.complete(exchange, self.attempt)
        finally:
            exchange.close()
        assert reply.status < 400
        return url

    async def stream(self) -> str:
        """One stream opened and relayed to its end (what its breaker verdict needs)."""
        exchange = self.exchange()
        try:
            url, stream = await self.forwarder.open_stream(exchange, self.attempt)
            outcome = exchange.outcome = StreamOutcome()
            async for _ in relay_events(stream, outcome, exchange.clock):
                pass
        finally:
            exchange.close()
        return url

    def tried(self) -> list[str]:
        return [r.url.removesuffix(PATH) for r in self.upstream.requests]

    def in_flight(self) -> list[int]:
        return [s.in_flight for s in self.pool.states()]

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"model": MODEL} | labels)
        return value or 0.0


BOTH = pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])


async def call(rig: Rig, streamed: bool) -> str:
    return await (rig.stream() if streamed else rig.complete())


# -- failover ---------------------------------------------------------------------------


@BOTH
async def test_an_unreachable_engine_is_passed_over(streamed: bool) -> None:
    rig = Rig(engines(a=Scripted(unreachable=True)))
    assert await call(rig, streamed) == B
    assert rig.tried() == [A, B]
    assert not rig.pool.health()[MODEL][A]  # marked down until a probe says otherwise
    assert rig.counter("vgate_retries_total") == 1.0
    assert rig.counter("vgate_upstream_errors_total", kind="connect") == 1.0


@BOTH
async def test_a_5xx_goes_to_the_next_engine(streamed: bool) -> None:
    rig = Rig(engines(a=Scripted(status=503, body=b"{}")))
    assert await call(rig, streamed) == B
    assert rig.tried() == [A, B]
    assert rig.pool.health()[MODEL][A]  # it answered: still up, only its breaker heard
    assert rig.counter("vgate_upstream_errors_total", kind="status") == 1.0


async def test_a_stream_that_breaks_before_its_first_event_goes_elsewhere() -> None:
    rig = Rig(engines(a=Scripted(events=(sse({"n": 1}),), break_after=0)))
    assert await rig.stream() == B
    assert rig.tried() == [A, B]
    assert rig.upstream.open_streams == set()


@BOTH
async def test_the_last_5xx_is_answered_when_every_engine_fails(streamed: bool) -> None:
    rig = Rig(engines(a=Scripted(status=500), b=Scripted(status=503, body=b'{"e": 1}')))
    with pytest.raises(UpstreamStatusError) as caught:
        await call(rig, streamed)
    assert caught.value.status == 503 and caught.value.raw_body == b'{"e": 1}'
    assert rig.in_flight() == [0, 0]


@BOTH
async def test_no_engine_reachable(streamed: bool) -> None:
    rig = Rig(engines(a=Scripted(unreachable=True), b=Scripted(unreachable=True)))
    with pytest.raises(NoEngineAvailableError):
        await call(rig, streamed)
    assert rig.in_flight() == [0, 0]


@BOTH
async def test_a_4xx_is_answered_not_retried(streamed: bool) -> None:
    rig = Rig(
        engines(a=Scripted(status=400, body=b'{"error": "bad"}')),
        breaker=BreakerPolicy(failures=1),
    )
    with pytest.raises(UpstreamStatusError) as caught:
        await call(rig, streamed)
    assert caught.value.status == 400
    assert rig.tried() == [A]
    assert not rig.pool.breaker_open(A)  # the client's fault, not the engine's
    assert rig.counter("vgate_retries_total") == 0.0


# -- how many tries ---------------------------------------------------------------------


@pytest.mark.parametrize(("retries", "tries"), [(0, 1), (1, 2), (2, 3), (5, 3)])
@BOTH
async def test_at_most_one_plus_retries_tries(streamed: bool, retries: int, tries: int) -> None:
    failing = Scripted(status=502)
    rig = Rig(engines(a=failing, b=failing, c=failing), urls=(A, B, C), retries=retries)
    with pytest.raises(UpstreamStatusError):
        await call(rig, streamed)
    assert rig.tried() == [A, B, C][:tries]  # never the same engine twice
    assert rig.counter("vgate_retries_total") == tries - 1


async def test_the_retry_budget_stops_failovers_once_spent() -> None:
    rig = Rig(engines(a=Scripted(status=500)), budget=RetryBudget(ratio=0.0, burst=1))
    assert await rig.complete() == B  # the one failover the budget holds
    with pytest.raises(UpstreamStatusError):
        await rig.complete()
    assert rig.tried() == [A, B, A]
    assert rig.counter("vgate_retry_budget_exhausted_total") == 1.0
    assert rig.counter("vgate_retries_total") == 1.0


async def test_the_retry_budget_refills_with_traffic() -> None:
    rig = Rig(engines(a=Scripted(status=500)), budget=RetryBudget(ratio=0.5, burst=1))
    assert await rig.complete() == B  # spends the only token
    rig.upstream.handler = engines()
    assert await rig.complete() == A  # +0.5
    rig.upstream.handler = engines(a=Scripted(status=500))
    assert await rig.complete() == B  # +0.5 = 1: one failover again


# -- the breaker ------------------------------------------------------------------------


@BOTH
async def test_consecutive_failures_open_the_breaker(streamed: bool) -> None:
    rig = Rig(engines(a=Scripted(status=500)), breaker=BreakerPolicy(failures=2, cooldown_s=10))
    await call(rig, streamed)
    assert not rig.pool.breaker_open(A)
    await call(rig, streamed)
    assert rig.pool.breaker_open(A)
    assert [s.breaker_open for s in rig.pool.states()] == [True, False]
    before = len(rig.upstream.requests)
    assert await call(rig, streamed) == B  # no traffic to A while open
    assert len(rig.upstream.requests) == before + 1
    rig.clock.now += 10
    rig.upstream.handler = engines()
    assert await call(rig, streamed) == A  # half-open: one try, which closes it
    assert not rig.pool.breaker_open(A)


@BOTH
async def test_a_success_resets_the_failure_count(streamed: bool) -> None:
    failing = engines(a=Scripted(status=500))
    rig = Rig(failing, breaker=BreakerPolicy(failures=2, cooldown_s=10))
    await call(rig, streamed)  # A: one failure
    rig.upstream.handler = engines()
    assert await call(rig, streamed) == A  # A: a success
    rig.upstream.handler = failing
    await call(rig, streamed)  # A: one failure again, not two
    assert not rig.pool.breaker_open(A)


async def test_every_engine_behind_an_open_breaker() -> None:
    rig = Rig(engines(a=Scripted(status=500), b=Scripted(status=500)), breaker=BreakerPolicy(1))
    with pytest.raises(UpstreamStatusError):
        await rig.complete()
    before = len(rig.upstream.requests)
    with pytest.raises(NoEngineAvailableError):
        await rig.complete()
    assert len(rig.upstream.requests) == before  # nobody was asked


async def test_an_engine_that_fails_mid_answer_is_held_against_it() -> None:
    async def breaks(request: FakeRequest) -> Scripted:
        raise UpstreamError("engine request failed: ServerDisconnectedError")

    rig = Rig(breaks, breaker=BreakerPolicy(failures=1))
    with pytest.raises(UpstreamError):
        await rig.complete()
    assert rig.in_flight() == [0, 0]
    assert rig.pool.breaker_open(A)


# -- the engine slot --------------------------------------------------------------------


async def test_complete_holds_the_slot_only_while_it_waits() -> None:
    gate = asyncio.Event()
    rig = Rig(engines(a=Scripted(body=b"{}", gate=gate)))
    exchange = rig.exchange()
    task = asyncio.create_task(rig.forwarder.complete(exchange, rig.attempt))
    async with asyncio.timeout(1):
        while not rig.upstream.requests:
            await asyncio.sleep(0)
    assert exchange.holds_engine and rig.in_flight() == [1, 0]
    gate.set()
    url, _ = await asyncio.wait_for(task, 1)
    assert url == A
    assert not exchange.holds_engine and rig.in_flight() == [0, 0]
    exchange.close()


async def test_a_failover_moves_the_slot() -> None:
    rig = Rig(engines(a=Scripted(status=500)))
    exchange = rig.exchange()
    url, stream = await rig.forwarder.open_stream(exchange, rig.attempt)
    assert url == B
    assert rig.in_flight() == [0, 1]
    assert rig.upstream.open_streams == {stream}
    exchange.close()


async def test_an_open_stream_keeps_its_slot_until_the_exchange_closes() -> None:
    rig = Rig(engines())
    exchange = rig.exchange()
    url, stream = await rig.forwarder.open_stream(exchange, rig.attempt)
    assert url == A and exchange.holds_engine
    assert rig.in_flight() == [1, 0] and rig.upstream.open_streams == {stream}
    assert stream.deadline is None  # no total_s
    exchange.close()
    assert rig.in_flight() == [0, 0] and rig.upstream.open_streams == set()


async def test_a_stream_gets_the_total_deadline() -> None:
    limits = Deadlines(connect_s=1.0, ttft_s=5.0, idle_s=5.0, total_s=30.0)
    rig = Rig(engines(), deadlines=limits)
    exchange = rig.exchange()
    now = asyncio.get_running_loop().time()
    _, stream = await rig.forwarder.open_stream(exchange, rig.attempt)
    assert stream.deadline is not None and now + 29 < stream.deadline <= now + 31
    exchange.close()


# -- timeouts ---------------------------------------------------------------------------


async def test_no_first_event_in_time() -> None:
    never = asyncio.Event()
    limits = Deadlines(connect_s=1.0, ttft_s=0.02, idle_s=5.0, total_s=None)
    rig = Rig(engines(a=Scripted(events=OK.events, gate=never)), deadlines=limits)
    exchange = rig.exchange()
    with pytest.raises(UpstreamTimeoutError, match=r"within 0\.02 s \(upstream\.ttft_timeout_s\)"):
        await asyncio.wait_for(rig.forwarder.open_stream(exchange, rig.attempt), 1)
    assert rig.tried() == [A]  # a timeout is answered, not retried
    assert not exchange.holds_engine and rig.in_flight() == [0, 0]
    assert rig.counter("vgate_upstream_errors_total", kind="timeout") == 1.0
    exchange.close()


async def test_the_total_deadline_bounds_the_first_event() -> None:
    never = asyncio.Event()
    limits = Deadlines(connect_s=1.0, ttft_s=None, idle_s=5.0, total_s=0.02)
    rig = Rig(engines(a=Scripted(events=OK.events, gate=never)), deadlines=limits)
    exchange = rig.exchange()
    with pytest.raises(UpstreamTimeoutError, match=r"within 0\.02 s \(upstream\.total_timeout_s\)"):
        await asyncio.wait_for(rig.forwarder.open_stream(exchange, rig.attempt), 1)
    exchange.close()


async def test_an_answer_that_times_out_is_not_retried() -> None:
    async def slow(request: FakeRequest) -> Scripted:
        raise UpstreamTimeoutError("timed out")  # what the client raises at answer_s

    limits = Deadlines(connect_s=1.0, ttft_s=None, idle_s=5.0, total_s=3.0)
    rig = Rig(slow, deadlines=limits, breaker=BreakerPolicy(failures=1))
    with pytest.raises(UpstreamTimeoutError, match=r"within 3 s \(upstream\.total_timeout_s\)"):
        await rig.complete()
    assert rig.tried() == [A]
    assert rig.pool.breaker_open(A)
    assert rig.in_flight() == [0, 0]
