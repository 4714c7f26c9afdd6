"""A half-open breaker admits one trial request at a time: the others keep avoiding the
engine until the trial's verdict closes the breaker (success) or opens it again
(failure); a trial that ends without a verdict frees the trial for the next request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.errors import NoEngineAvailableError, UpstreamStatusError, UpstreamTimeoutError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder, RetryBudget
from gateway.pool.engine_pool import BreakerPolicy, EnginePool
from gateway.routing.policies import EndpointView
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.fake import FakeRequest, FakeUpstream, Scripted, sse
from tests.helpers.waiting import until

MODEL = "m"
A, B = "http://a", "http://b"
PATH = "/v1/chat/completions"
BREAKER = BreakerPolicy(failures=2, cooldown_s=10.0)
DEADLINES = Deadlines(connect_s=1.0, ttft_s=5.0, idle_s=5.0, total_s=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FirstListed:
    """Always the first candidate: a half-open A is chosen whenever it is offered."""

    wants_affinity_key = False

    def choose(self, candidates: Sequence[EndpointView], key: bytes | None = None) -> EndpointView:
        return candidates[0]


def urls(pool: EnginePool) -> list[str]:
    return [view.url for view in pool.snapshot(MODEL)]


def half_open(clock: Clock) -> EnginePool:
    """A pool whose engine A has just half-opened (B is fine)."""
    pool = EnginePool({MODEL: [A, B]}, BREAKER, clock)
    for _ in range(BREAKER.failures):
        pool.record_failure(A)
    assert urls(pool) == [B]
    clock.now += BREAKER.cooldown_s + 0.5
    assert urls(pool) == [A, B]
    return pool


class Rig:
    def __init__(self, a: Scripted, retries: int = 0) -> None:
        self.clock = Clock()
        self.pool = half_open(self.clock)
        self.a = a

        def handle(request: FakeRequest) -> Scripted:
            return self.a if request.url.startswith(A) else Scripted(events=(sse({"n": 1}),))

        self.upstream = FakeUpstream(handle)
        self.forwarder = Forwarder(
            self.pool,
            self.upstream,
            GatewayMetrics(),
            retries,
            {MODEL: DEADLINES},
            DEADLINES,
            budget=RetryBudget(1.0, 100),
        )

    async def call(self, streamed: bool = False) -> str:
        exchange = Exchange(PATH, self.pool, GatewayMetrics())
        attempt = Attempt(MODEL, PATH, b"{}", "r", FirstListed(), None)
        try:
            if streamed:
                url, _ = await self.forwarder.open_stream(exchange, attempt)
            else:
                url, _ = await self.forwarder.complete(exchange, attempt)
        finally:
            exchange.close()
        return url

    def sent_to_a(self) -> int:
        return sum(r.url.startswith(A) for r in self.upstream.requests)


def test_the_first_request_to_take_a_half_open_engine_is_its_only_trial() -> None:
    clock = Clock()
    pool = half_open(clock)
    pool.acquire(A)  # the trial
    assert urls(pool) == [B], "while the trial is out, the others keep avoiding A"
    pool.release(A)
    pool.record_success(A)
    assert urls(pool) == [A, B]
    pool.acquire(A)
    assert urls(pool) == [A, B], "a closed breaker: no trial, every request may go"
    pool.release(A)


def test_a_failed_trial_opens_the_breaker_again_for_a_whole_cooldown() -> None:
    clock = Clock()
    pool = half_open(clock)
    pool.acquire(A)
    pool.record_failure(A)
    pool.release(A)
    assert urls(pool) == [B] and pool.breaker_open(A)
    clock.now += BREAKER.cooldown_s + 0.5
    assert urls(pool) == [A, B], "the next cool-down ends with another trial"
    pool.acquire(A)
    assert urls(pool) == [B]


async def test_concurrent_requests_during_half_open_send_one_trial() -> None:
    gate = asyncio.Event()
    rig = Rig(Scripted(gate=gate))  # A hangs until the gate opens
    calls = [asyncio.create_task(rig.call()) for _ in range(10)]
    await until(lambda: sum(task.done() for task in calls) == 9)
    assert rig.sent_to_a() == 1, "half-open lets one trial through, not every request"
    done = [task for task in calls if task.done()]
    assert len(done) == 9 and {task.result() for task in done} == {B}
    assert urls(rig.pool) == [B]
    gate.set()  # the trial succeeds: the breaker closes
    assert sorted(await asyncio.gather(*calls)) == [A] + [B] * 9
    assert urls(rig.pool) == [A, B] and not rig.pool.breaker_open(A)


async def test_a_timed_out_trial_reopens_and_the_rest_never_reach_the_engine() -> None:
    rig = Rig(Scripted(gate=asyncio.Event()))
    short = Deadlines(connect_s=1.0, ttft_s=0.1, idle_s=0.1, total_s=None)
    rig.forwarder = Forwarder(rig.pool, rig.upstream, GatewayMetrics(), 0, {MODEL: short}, short)
    trial = asyncio.create_task(rig.call(streamed=True))
    await until(lambda: rig.sent_to_a() == 1)
    others = await asyncio.gather(*(rig.call(streamed=True) for _ in range(5)))
    assert others == [B] * 5
    with pytest.raises(UpstreamTimeoutError):
        await trial
    assert rig.sent_to_a() == 1 and rig.pool.breaker_open(A)
    assert urls(rig.pool) == [B]


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_trial_whose_client_leaves_frees_the_trial(streamed: bool) -> None:
    gate = asyncio.Event()
    rig = Rig(Scripted(gate=gate, events=(sse({"n": 1}),)))
    trial = asyncio.create_task(rig.call(streamed))
    await until(lambda: rig.sent_to_a() == 1)
    assert urls(rig.pool) == [B]
    trial.cancel()  # the client left: no verdict
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert urls(rig.pool) == [A, B], "the engine must not stay excluded for ever"
    gate.set()
    assert await rig.call(streamed) == A  # the next request is the trial, and succeeds
    assert not rig.pool.breaker_open(A)


async def test_a_stream_trial_answered_4xx_frees_the_trial() -> None:
    rig = Rig(Scripted(status=400, body=b'{"error": "bad"}'))
    with pytest.raises(UpstreamStatusError):
        await rig.call(streamed=True)  # a client error says nothing of the engine
    assert urls(rig.pool) == [A, B]


async def test_a_request_from_before_the_breaker_opened_leaving_frees_no_trial() -> None:
    clock = Clock()
    pool = EnginePool({MODEL: [A, B]}, BREAKER, clock)

    async def old_request(leave: asyncio.Event) -> None:
        pool.acquire(A)
        await leave.wait()
        pool.release(A)  # a stream that began before the failures ends, verdict given

    leave = asyncio.Event()
    old = asyncio.create_task(old_request(leave))
    await asyncio.sleep(0)
    for _ in range(BREAKER.failures):
        pool.record_failure(A)
    clock.now += BREAKER.cooldown_s + 0.5
    pool.acquire(A)  # this task's request: the trial
    leave.set()
    await old
    assert urls(pool) == [B], "the trial is still out"
    pool.release(A)  # the trial leaves without a verdict
    assert urls(pool) == [A, B]


def test_a_trial_longer_than_a_cooldown_lets_the_next_request_try() -> None:
    """Review: a non-streaming trial gets its verdict only with its whole answer; a
    slow but healthy engine was left out (503 on a one-engine model) for all of it."""
    clock = Clock()
    pool = half_open(clock)
    pool.acquire(A)  # the trial, still generating
    assert urls(pool) == [B]
    clock.now += BREAKER.cooldown_s + 0.5
    assert urls(pool) == [A, B], "a trial out for a whole cool-down keeps no one away"
    pool.acquire(A)  # the next one tries too
    pool.release(A)
    pool.release(A)


@pytest.mark.parametrize("streamed", [False, True])
async def test_no_engine_left_says_when_to_retry(streamed: bool) -> None:
    """Every engine's breaker open: the 503 says when the soonest half-opens
    (``Retry-After``), so a client does not retry into a breaker that stays open."""
    clock = Clock()
    pool = EnginePool({MODEL: [A, B]}, BREAKER, clock)
    for _ in range(BREAKER.failures):
        pool.record_failure(A)
    clock.now += 3.0
    for _ in range(BREAKER.failures):
        pool.record_failure(B)
    forwarder = Forwarder(
        pool, FakeUpstream(lambda _: Scripted()), GatewayMetrics(), 0, {}, DEADLINES
    )
    exchange = Exchange(PATH, pool, GatewayMetrics())
    attempt = Attempt(MODEL, PATH, b"{}", "r", FirstListed(), None)
    with pytest.raises(NoEngineAvailableError) as caught:
        if streamed:
            await forwarder.open_stream(exchange, attempt)
        else:
            await forwarder.complete(exchange, attempt)
    exchange.close()
    assert caught.value.headers["Retry-After"] == "7"  # A half-opens in 7 s
    assert caught.value.headers["retry-after-ms"] == "7000"
    assert pool.retry_in(MODEL) == 7.0
    clock.now += 6.5
    assert pool.retry_in(MODEL) == 1.0  # at least a second
