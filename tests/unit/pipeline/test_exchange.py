"""The Exchange, the one owner of a request's resources: closing releases each of
them exactly once, and settles the rate-limit ticket according to how the request
ended (real usage when finished, nothing when it failed, the reservation when
nobody knows). Settlement is observed in a real in-memory limiter."""

from __future__ import annotations

import pytest

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flights
from gateway.config.cache import CacheSettings
from gateway.config.sections import RateLimitSettings
from gateway.errors import GatewayError, OverloadedError, UpstreamStatusError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.cache_flow import CacheFill
from gateway.pipeline.exchange import Exchange
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission, Ticket
from gateway.ratelimit.limits import Limits, LimitScope
from gateway.upstream.fake import FakeStream, Scripted

MODEL = "m"
LABEL = "/v1/chat/completions"
ENGINES = ("http://a", "http://b")
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
SCOPES = (LimitScope("key:team", Limits(tpm=10_000, max_concurrent=4), "team"),)


class Setup:
    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.pool = EnginePool({MODEL: ENGINES})
        self.limiter = MemoryLimiter()
        self.admission = Admission(self.limiter, RateLimitSettings(), self.metrics)
        self.streams: set[FakeStream] = set()

    def exchange(self) -> Exchange:
        exchange = Exchange(LABEL, self.pool, self.metrics)
        exchange.model = MODEL
        return exchange

    async def admitted(self) -> tuple[Exchange, Ticket]:
        exchange = self.exchange()
        ticket = await self.admission.admit(SCOPES, BODY)
        exchange.admit(ticket)
        return exchange, ticket

    async def tokens_charged(self) -> int:
        """The tokens counted in the key's window right now (a probe that costs none)."""
        decision = await self.limiter.admit(SCOPES, "probe", 0, 60)
        self.limiter.settle(SCOPES, "probe", 0, 0)
        return decision.states[0].tokens

    def in_flight(self) -> list[int]:
        return [s.in_flight for s in self.pool.states()]

    def gauge(self) -> float:
        value = self.metrics.registry.get_sample_value("vgate_requests_in_flight", {"model": MODEL})
        return value or 0.0

    def requests(self, status: int) -> float:
        labels = {"model": MODEL, "endpoint": LABEL, "status": str(status), "variant": ""}
        return self.metrics.registry.get_sample_value("vgate_requests_total", labels) or 0.0

    def stream(self) -> FakeStream:
        return FakeStream(Scripted(events=(b"data: {}\n\n",)), self.streams)


async def test_closing_twice_releases_once() -> None:
    s = Setup()
    s.pool.acquire(ENGINES[0])  # another request on the same engine
    exchange, _ = await s.admitted()
    exchange.take_engine(ENGINES[0])
    exchange.count_in_flight()
    exchange.finished(12)
    exchange.close()
    exchange.close()
    assert exchange.closed
    assert s.in_flight() == [1, 0]  # the other request's slot is still counted
    assert s.gauge() == 0.0
    assert s.requests(200) == 1.0
    assert s.admission.leased == 0
    assert await s.tokens_charged() == 12


async def test_finished_settles_with_the_real_usage_at_once() -> None:
    s = Setup()
    exchange, ticket = await s.admitted()
    assert s.admission.leased == 1
    assert await s.tokens_charged() == ticket.reserved > 40
    exchange.finished(7)
    assert s.admission.leased == 0  # before close: the next request finds its slot free
    assert await s.tokens_charged() == 7
    exchange.close()
    assert await s.tokens_charged() == 7


async def test_finished_without_usage_keeps_the_reservation() -> None:
    s = Setup()
    exchange, ticket = await s.admitted()
    exchange.finished(None)
    exchange.close()
    assert s.admission.leased == 0
    assert await s.tokens_charged() == ticket.reserved


async def test_failed_charges_nothing() -> None:
    s = Setup()
    exchange, _ = await s.admitted()
    exchange.failed(UpstreamStatusError(500, b"{}", "application/json"))
    assert s.admission.leased == 1  # settled when it closes
    exchange.close()
    assert s.admission.leased == 0
    assert await s.tokens_charged() == 0
    assert s.requests(500) == 1.0


async def test_closed_without_an_ending_keeps_the_reservation() -> None:
    """The client left or the stream broke: the engine may have generated it all."""
    s = Setup()
    exchange, ticket = await s.admitted()
    exchange.close()
    assert s.admission.leased == 0
    assert await s.tokens_charged() == ticket.reserved
    assert s.requests(200) == 0.0  # nobody was answered


async def test_failed_puts_the_rate_limit_and_cache_headers_on_the_error() -> None:
    s = Setup()
    exchange, ticket = await s.admitted()
    assert ticket.headers  # x-ratelimit-* of a token-limited key
    exchange.cache_status = b"MISS"
    error = OverloadedError("busy", headers={"Retry-After": "3"})
    exchange.failed(error)
    assert error.headers.pop("server-timing").startswith("auth;dur=")  # what it went through
    assert error.headers == ticket.headers | {"Retry-After": "3", "X-Cache": "MISS"}
    exchange.close()


async def test_failed_without_a_cache_says_nothing_of_it() -> None:
    s = Setup()
    exchange = s.exchange()
    error = GatewayError("boom")
    exchange.failed(error)
    assert list(error.headers) == ["server-timing"]  # no X-Cache, no rate-limit headers
    exchange.close()


async def test_the_in_flight_gauge_goes_up_and_back() -> None:
    s = Setup()
    exchange = s.exchange()
    exchange.count_in_flight()
    exchange.count_in_flight()  # counted once
    assert s.gauge() == 1.0
    exchange.close()
    assert s.gauge() == 0.0


async def test_closing_releases_the_engine_and_closes_its_stream() -> None:
    s = Setup()
    exchange = s.exchange()
    exchange.take_engine(ENGINES[1])
    stream = s.stream()
    exchange.hold_stream(stream)
    assert exchange.holds_engine and s.in_flight() == [0, 1]
    exchange.close()
    assert stream.closed and s.streams == set()
    assert not exchange.holds_engine and s.in_flight() == [0, 0]


async def test_one_engine_at_a_time() -> None:
    s = Setup()
    exchange = s.exchange()
    exchange.take_engine(ENGINES[0])
    stream = s.stream()
    exchange.hold_stream(stream)
    exchange.take_engine(ENGINES[1])  # failover: the first engine is let go
    assert stream.closed
    assert s.in_flight() == [0, 1]
    exchange.drop_engine()
    exchange.drop_engine()
    assert s.in_flight() == [0, 0]
    exchange.close()
    assert s.in_flight() == [0, 0]


async def test_leaving_a_flight_once() -> None:
    s = Setup()
    flights = Flights()
    flight = flights.lead("k")
    exchange = s.exchange()
    joined = flights.join("k")
    assert joined is flight
    flights.join("k")  # another follower
    exchange.follow(flight)
    exchange.leave_flight()
    assert flight.followers == 1
    exchange.leave_flight()
    exchange.close()
    assert flight.followers == 1  # the other follower is still there


async def test_closing_leaves_the_followed_flight() -> None:
    s = Setup()
    flights = Flights()
    flights.lead("k")
    flight = flights.join("k")
    assert flight is not None
    exchange = s.exchange()
    exchange.follow(flight)
    exchange.close()
    assert flight.followers == 0


@pytest.mark.parametrize("landed", [False, True])
async def test_closing_fails_a_fill_that_did_not_land(landed: bool) -> None:
    s = Setup()
    cache = ResponseCache(CacheSettings(enabled=True), {}, MemoryEntryStore(1 << 20), s.metrics)
    fill = CacheFill(cache, MODEL, CachePlan("k", True, True, None, 60, 1 << 20))
    exchange = s.exchange()
    exchange.lead(fill)
    assert exchange.fill is fill and len(cache.flights) == 1
    if landed:
        fill.finish_json(
            b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},'
            b' "finish_reason": "stop"}]}'
        )
    exchange.close()
    assert exchange.fill is None
    assert len(cache.flights) == 0
    assert fill.flight.done
    assert fill.flight.failed is not landed
