"""Admission (in-memory backend, a clock we move): concurrency leases renewed while a
request runs, never for a ticket dropped unsettled; the output cap a token limit
grants (what is reserved is what the engine may generate: every prompt and choice
counted, the default max_tokens when none is set); settlements after the window;
and the Redis-failure policies, ``local`` deciding with this replica's share."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import pytest

from gateway.auth.authenticator import KeyDirectory
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.config.sections import RateLimitSettings, StaticKey
from gateway.errors import DependencyUnavailableError, RateLimitError, StoreUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.cost import PROMPT_FRAMING_CHARS
from gateway.ratelimit.limits import Decision, LimiterBackend, Limits, LimitScope

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[Admission, KeyDirectory, Clock]:
    clock = Clock()
    admission = Admission(
        MemoryLimiter(clock=clock),
        RateLimitSettings(concurrency_lease_s=60),
        GatewayMetrics(),
    )
    keys = KeyDirectory([StaticKey(name="one", key="sk-one-0123456789", max_concurrent=1)], None)
    return admission, keys, clock


async def refused(admission: Admission, keys: KeyDirectory) -> bool:
    principal = keys.known("Bearer sk-one-0123456789")
    assert principal is not None
    try:
        (await admission.admit(principal.scopes("m"), BODY)).settle(0)
    except RateLimitError:
        return True
    return False


async def test_a_running_request_keeps_its_slot_past_its_first_lease() -> None:
    admission, keys, clock = setup()
    principal = keys.known("Bearer sk-one-0123456789")
    assert principal is not None
    ticket = await admission.admit(principal.scopes("m"), BODY)
    for _ in range(6):  # 6 renewals of 20 s: twice the lease
        clock.now += admission.renew_interval_s
        await admission.renew_leases()
    assert await refused(admission, keys)
    ticket.settle(0)
    assert not await refused(admission, keys)


async def test_a_ticket_dropped_unsettled_stops_being_renewed() -> None:
    admission, keys, clock = setup()
    principal = keys.known("Bearer sk-one-0123456789")
    assert principal is not None
    ticket = await admission.admit(principal.scopes("m"), BODY)
    del ticket
    gc.collect()
    clock.now += admission.renew_interval_s
    await admission.renew_leases()
    assert await refused(admission, keys)  # its lease still stands...
    clock.now += 61
    await admission.renew_leases()
    assert not await refused(admission, keys)  # ...and then runs out


class DownLimiter(MemoryLimiter):
    """A shared limiter that is unreachable, with this process's limiter to fall back on."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.local = MemoryLimiter(clock=clock)

    def admit(self, *args: Any, **kwargs: Any) -> asyncio.Future[Decision]:
        raise StoreUnavailable("redis is down")

    def settle(self, *args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("redis is down")

    def renew(self, *args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("redis is down")

    @property
    def fallback(self) -> LimiterBackend:
        return self.local


def tpm_key(tpm: int, **limits: int) -> tuple[LimitScope, ...]:
    return (LimitScope("{tpm}", Limits(tpm=tpm, **limits), "tpm"),)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}  # 6 tokens


async def test_what_is_reserved_is_what_the_engine_may_generate() -> None:
    """Ten requests without max_tokens on a 2000-token key, each answered with every
    token it was allowed: together they never use more than the limit."""
    clock = Clock()
    admission = Admission(MemoryLimiter(clock=clock), RateLimitSettings(), GatewayMetrics())
    used, caps, refusals = 0, [], []
    for _ in range(10):
        try:
            ticket = await admission.admit(tpm_key(2000), CHAT)
        except RateLimitError as refused:
            refusals.append(refused.error_type)
            continue
        assert ticket.output_cap is not None
        caps.append(ticket.output_cap)
        assert ticket.reserved == 6 + ticket.output_cap
        ticket.settle(ticket.reserved)  # the engine generated all it was allowed
        used += ticket.reserved
        clock.now += 1
    assert caps[:3] == [512, 512, 512]  # ratelimit.default_max_tokens
    assert caps[3] == 2000 - 3 * 518 - 6  # what the budget left after its prompt
    assert used == 2000
    assert refusals == ["tokens"] * 6


async def test_every_prompt_and_choice_of_a_request_is_reserved() -> None:
    clock = Clock()
    admission = Admission(MemoryLimiter(clock=clock), RateLimitSettings(), GatewayMetrics())
    eight = {"model": "m", "prompt": ["abcd"] * 8, "max_tokens": 300}
    ticket = await admission.admit(tpm_key(2000), eight)
    prompt = 8 * (4 + PROMPT_FRAMING_CHARS) // 4  # each listed prompt framed: 24 tokens
    assert ticket.output_cap == (2000 - prompt) // 8  # 247 each, not 300
    assert ticket.reserved == prompt + 8 * 247 and ticket.shortened
    with pytest.raises(RateLimitError) as caught:
        await admission.admit(tpm_key(2000), eight)
    assert caught.value.error_type == "tokens"
    assert "Retry-After" in caught.value.headers
    tokens_ids = {"model": "m", "prompt": [[1, 2, 3]] * 4, "n": 2, "best_of": 3}
    ticket = await admission.admit(tpm_key(10_000), tokens_ids)
    assert ticket.reserved == 12 + 4 * 3 * 512  # four prompts, three sequences each


async def test_a_request_whose_prompt_leaves_no_room_is_refused_for_good() -> None:
    admission = Admission(MemoryLimiter(clock=Clock()), RateLimitSettings(), GatewayMetrics())
    long = {"model": "m", "prompt": "x" * 4000}  # 1000 tokens
    with pytest.raises(RateLimitError) as caught:
        await admission.admit(tpm_key(1000), long)
    assert caught.value.error_type == "tokens"
    assert "Retry-After" not in caught.value.headers
    assert caught.value.headers["x-should-retry"] == "false"  # the SDKs do not retry it
    assert "Shorten the prompt" in caught.value.message


async def test_a_settlement_after_its_window_is_counted() -> None:
    clock = Clock()
    admission = Admission(MemoryLimiter(clock=clock), RateLimitSettings(), GatewayMetrics())
    ticket = await admission.admit(tpm_key(2000), CHAT | {"max_tokens": 10})
    clock.now += 61  # a long stream: its admission's bucket has left the window
    ticket.settle(1500)
    probe = await admission.admit(tpm_key(2000), CHAT | {"max_tokens": 10})
    assert probe.headers["x-ratelimit-remaining-tokens"] == str(2000 - (1500 - 16) - 16)
    probe.settle(0)


async def test_without_a_token_limit_nothing_is_capped() -> None:
    admission = Admission(MemoryLimiter(clock=Clock()), RateLimitSettings(), GatewayMetrics())
    ticket = await admission.admit((LimitScope("{r}", Limits(rpm=5), "r"),), CHAT)
    assert ticket.output_cap is None and ticket.reserved == 0


@pytest.mark.parametrize("policy", ["local", "fail_open", "fail_closed"])
async def test_with_redis_down_the_policy_decides(policy: str) -> None:
    clock = Clock()
    metrics = GatewayMetrics()
    settings = RateLimitSettings(on_redis_error=policy, replicas_hint=3)
    admission = Admission(DownLimiter(clock), settings, metrics)
    scopes = (LimitScope("{r}", Limits(rpm=10, max_concurrent=6), "r"),)
    outcomes: list[str] = []
    for _ in range(5):
        try:
            ticket = await admission.admit(scopes, CHAT)
            outcomes.append("local" if ticket.raw_headers else "free")
        except RateLimitError as refused:
            outcomes.append(refused.error_type)
        except DependencyUnavailableError:
            outcomes.append("503")
    expected = {
        "local": ["local"] * 2 + ["concurrency"] * 3,  # 6 // 3 slots: two in flight
        "fail_open": ["free"] * 5,
        "fail_closed": ["503"] * 5,
    }
    assert outcomes == expected[policy]
    errors = metrics.registry.get_sample_value(
        "vgate_redis_errors_total", {"component": "ratelimit"}
    )
    assert errors == 5


async def test_local_admissions_are_settled_and_renewed_locally() -> None:
    clock = Clock()
    settings = RateLimitSettings(on_redis_error="local", replicas_hint=3)
    admission = Admission(DownLimiter(clock), settings, GatewayMetrics())
    scopes = (LimitScope("{r}", Limits(rpm=30, max_concurrent=3), "r"),)
    ticket = await admission.admit(scopes, CHAT)  # this replica's share: 10 rpm, 1 slot
    assert ticket.headers["x-ratelimit-limit-requests"] == "10"
    for _ in range(6):  # twice the lease: kept by renewals
        clock.now += admission.renew_interval_s
        await admission.renew_leases()
    with pytest.raises(RateLimitError):
        await admission.admit(scopes, CHAT)
    ticket.settle(0)
    (await admission.admit(scopes, CHAT)).settle(0)


class LateLimiter(MemoryLimiter):
    """Decides in memory but hands the decision over only when the test says, as Redis's
    reply arrives: the admission waits on a pending future until then."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.pending: list[tuple[asyncio.Future[Decision], Decision]] = []

    def admit(self, *args: Any, **kwargs: Any) -> asyncio.Future[Decision]:
        decided = super().admit(*args, **kwargs).result()
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.pending.append((future, decided))
        return future


async def test_a_caller_that_leaves_as_its_admission_arrives_is_undone() -> None:
    """The reply and the client's leaving in one turn of the loop: the decision is set
    on the future, then the waiting task is cancelled before it resumes. Nothing would
    ever settle that admission: its concurrency slot stayed taken for a whole lease."""
    limiter = LateLimiter(Clock())
    admission = Admission(limiter, RateLimitSettings(concurrency_lease_s=60), GatewayMetrics())
    scopes = (LimitScope("{one}", Limits(max_concurrent=1, tpm=1000), "one"),)
    waiting = asyncio.create_task(admission.admit(scopes, BODY))
    while not limiter.pending:
        await asyncio.sleep(0)
    future, decided = limiter.pending.pop()
    assert decided.admitted
    future.set_result(decided)  # the reply came...
    waiting.cancel()  # ...and the client left, in the same turn
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.leased == 0
    again = asyncio.create_task(admission.admit(scopes, BODY))
    while not limiter.pending:
        await asyncio.sleep(0)
    future, decided = limiter.pending.pop()
    assert decided.admitted  # the slot and the tokens were given back
    future.set_result(decided)
    (await again).settle(0)


class SwitchedLimiter(DownLimiter):
    """Down while :attr:`down`; the in-memory limiter otherwise."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.down = True

    def admit(self, *args: Any, **kwargs: Any) -> asyncio.Future[Decision]:
        if self.down:
            raise StoreUnavailable("OOM command not allowed when used memory > 'maxmemory'")
        return MemoryLimiter.admit(self, *args, **kwargs)


@pytest.mark.parametrize("policy", ["local", "fail_open", "fail_closed"])
async def test_only_a_limiter_failing_closed_is_refusing(policy: str) -> None:
    """Readiness reads :attr:`Admission.refusing`: true under ``fail_closed`` from a failed
    admission call until one succeeds; never under the policies that still serve."""
    clock = Clock()
    limiter = SwitchedLimiter(clock)
    settings = RateLimitSettings(on_redis_error=policy)
    admission = Admission(limiter, settings, GatewayMetrics())
    scopes = (LimitScope("{r}", Limits(rpm=10), "r"),)
    assert not admission.refusing
    with contextlib.suppress(DependencyUnavailableError):
        (await admission.admit(scopes, CHAT)).settle(0)
    assert admission.refusing == (policy == "fail_closed")
    limiter.down = False
    (await admission.admit(scopes, CHAT)).settle(0)
    assert not admission.refusing
