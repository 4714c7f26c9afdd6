"""The sliding-window limiter, decision by decision, on both backends: the Lua script
in a real redis-server and its in-memory twin (short windows, real time; a 1 s window
has buckets of 16 ms, so a request counts for 1 s to 1.016 s)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.backends.memory.limiter import MemoryLimiter
from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink
from gateway.ratelimit.limits import (
    NEVER,
    LimiterBackend,
    Limits,
    LimitScope,
    ScopesMemo,
    ScopeState,
    as_text,
    estimate_tokens,
    format_duration,
    headline,
)

WINDOW = 1.0
BUCKET = 0.016  # a sixtieth of the window, in whole ms: a request counts at most this longer
LEASE = 30.0


@pytest.fixture(params=["redis", "memory"])
async def limiter(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[LimiterBackend]:
    if request.param == "memory":
        yield MemoryLimiter(window_s=WINDOW)
        return
    link = RedisLink(redis_url, timeout_s=1.0, retry_s=0.1)
    yield RedisLimiter(link, prefix=f"test:{uuid.uuid4().hex}:", window_s=WINDOW)
    await link.close()


def scope(**limits: int) -> LimitScope:
    return LimitScope("{k}", Limits(**limits))


async def admitted(
    limiter: LimiterBackend, scopes: list[LimitScope], count: int, tokens: int = 0
) -> int:
    results = [
        (await limiter.admit(scopes, uuid.uuid4().hex, tokens, LEASE)).admitted
        for _ in range(count)
    ]
    return sum(results)


async def test_admits_exactly_rpm_then_refuses_with_retry_after(limiter: LimiterBackend) -> None:
    scopes = [scope(rpm=5)]
    assert await admitted(limiter, scopes, 8) == 5
    decision = await limiter.admit(scopes, "x", 0, LEASE)
    assert not decision.admitted
    assert decision.refused == "requests"
    assert 0 < decision.retry_after_s <= WINDOW + BUCKET
    assert decision.states[0].requests == 5


async def test_window_edge_no_span_admits_more_than_the_limit(limiter: LimiterBackend) -> None:
    scopes = [scope(rpm=4)]
    started = time.monotonic()
    assert await admitted(limiter, scopes, 4) == 4
    await asyncio.sleep(max(0.0, started + WINDOW * 0.8 - time.monotonic()))
    assert await admitted(limiter, scopes, 3) == 0  # still inside the same 60 s (here: 1 s) span
    await asyncio.sleep(max(0.0, started + WINDOW + 0.15 - time.monotonic()))
    assert await admitted(limiter, scopes, 6) == 4  # the first four left the window: four again


async def test_window_slides_rather_than_resetting(limiter: LimiterBackend) -> None:
    scopes = [scope(rpm=4)]
    assert await admitted(limiter, scopes, 2) == 2
    await asyncio.sleep(WINDOW / 2)
    assert await admitted(limiter, scopes, 4) == 2  # 2 old + 2 new fill the window
    await asyncio.sleep(WINDOW / 2 + 0.1)
    assert await admitted(limiter, scopes, 4) == 2  # only the first two have left


async def test_tokens_are_reserved_then_refunded_to_usage(limiter: LimiterBackend) -> None:
    scopes = [scope(tpm=100)]
    first = await limiter.admit(scopes, "a", 40, LEASE)
    assert (await limiter.admit(scopes, "b", 40, LEASE)).admitted
    refused = await limiter.admit(scopes, "c", 40, LEASE)
    assert first.admitted and not refused.admitted and refused.refused == "tokens"
    assert refused.states[0].tokens == 80
    limiter.settle(scopes, "a", 40, 10, first.at)  # the answer was short: 30 tokens come back
    retried = await limiter.admit(scopes, "c", 40, LEASE)
    assert retried.admitted
    assert retried.states[0].tokens == 90


async def test_usage_above_the_reservation_is_charged(limiter: LimiterBackend) -> None:
    scopes = [scope(tpm=100)]
    first = await limiter.admit(scopes, "a", 10, LEASE)
    assert first.admitted
    limiter.settle(scopes, "a", 10, 95, first.at)
    decision = await limiter.admit(scopes, "b", 10, LEASE)
    assert not decision.admitted
    assert decision.states[0].tokens == 95


async def test_a_request_larger_than_the_token_limit_is_never_admitted(
    limiter: LimiterBackend,
) -> None:
    decision = await limiter.admit([scope(tpm=100)], "a", 101, LEASE)
    assert not decision.admitted
    assert decision.retry_after_s == NEVER


async def test_concurrency_slots_come_back_when_settled(limiter: LimiterBackend) -> None:
    scopes = [scope(max_concurrent=2)]
    assert (await limiter.admit(scopes, "a", 0, LEASE)).admitted
    assert (await limiter.admit(scopes, "b", 0, LEASE)).admitted
    refused = await limiter.admit(scopes, "c", 0, LEASE)
    assert refused.refused == "concurrency"
    limiter.settle(scopes, "a", 0, None)
    assert (await limiter.admit(scopes, "c", 0, LEASE)).admitted


async def test_a_dead_gateways_slot_frees_after_its_lease(limiter: LimiterBackend) -> None:
    scopes = [scope(max_concurrent=1)]
    assert (await limiter.admit(scopes, "a", 0, 0.2)).admitted  # never settled
    assert not (await limiter.admit(scopes, "b", 0, 0.2)).admitted
    await asyncio.sleep(0.3)
    assert (await limiter.admit(scopes, "b", 0, 0.2)).admitted


async def test_a_renewed_lease_outlives_its_first_expiry(limiter: LimiterBackend) -> None:
    scopes = [scope(max_concurrent=1)]
    assert (await limiter.admit(scopes, "a", 0, 0.3)).admitted
    for _ in range(3):  # 0.6 s in all, twice the lease
        await asyncio.sleep(0.2)
        limiter.renew(scopes, "a", 0.3)
    assert not (await limiter.admit(scopes, "b", 0, 0.3)).admitted
    limiter.settle(scopes, "a", 0, None)
    limiter.renew(scopes, "a", 0.3)  # a late renewal does not take the slot back
    assert (await limiter.admit(scopes, "b", 0, 0.3)).admitted


async def test_a_settlement_frees_the_slot_of_each_scope_that_holds_one(
    limiter: LimiterBackend,
) -> None:
    """Only the scopes with a concurrency limit hold slots (the script is told which):
    here the second, behind a token-limited first one."""
    key_wide = LimitScope("{k}", Limits(tpm=10_000))
    per_model = LimitScope("{k}:m:small", Limits(rpm=100, max_concurrent=1))
    scopes = [key_wide, per_model]
    first = await limiter.admit(scopes, "a", 10, LEASE, 100, 1)
    assert first.admitted
    assert (await limiter.admit(scopes, "b", 10, LEASE, 100, 1)).refused == "concurrency"
    limiter.settle(scopes, "a", 10 + first.granted, 30, first.at)
    second = await limiter.admit(scopes, "b", 10, LEASE, 100, 1)
    assert second.admitted
    assert second.states[0].tokens == 30 + 110  # the settled usage and the new reservation


async def test_operations_sent_together_see_each_others_effects(
    limiter: LimiterBackend,
) -> None:
    """Settlements and admissions made in one turn (one script call in Redis, which
    keeps each scope's counters and writes them back once) are decided in order, each
    after the ones before it: a refund frees tokens for the admission behind it."""
    scopes = [scope(rpm=100, tpm=300)]
    first = await limiter.admit(scopes, "a", 10, LEASE, 100, 1)
    assert first.admitted and first.states[0].tokens == 110
    limiter.settle(scopes, "a", 110, 30, first.at)  # refund 80: 30 left
    second = limiter.admit(scopes, "b", 10, LEASE, 100, 1)  # 140
    third = limiter.admit(scopes, "c", 10, LEASE, 100, 1)  # 250
    fourth = limiter.admit(scopes, "d", 10, LEASE, 100, 1)  # 50 left: granted 40
    limiter.settle(scopes, "z", 0, 5, first.at)  # a charge on a bucket in the window
    fifth = limiter.admit(scopes, "e", 10, LEASE, 100, 1)  # nothing left after the prompt
    decisions = [await second, await third, await fourth, await fifth]
    assert [d.states[0].tokens for d in decisions[:3]] == [140, 250, 300]
    assert decisions[2].granted == 40
    assert decisions[3].refused == "tokens" and decisions[3].states[0].tokens == 305
    assert [d.states[0].requests for d in decisions] == [2, 3, 4, 4]
    probe = await limiter.admit(scopes, "p", 0, LEASE)  # a later call reads what was written
    assert probe.refused == "tokens" and probe.states[0][:2] == (4, 305)


async def test_scopes_are_decided_together(limiter: LimiterBackend) -> None:
    key_wide = LimitScope("{k}", Limits(rpm=5))
    per_model = LimitScope("{k}:m:small", Limits(rpm=2))
    assert await admitted(limiter, [key_wide, per_model], 4) == 2
    # Refusals by the model's limit were not counted against the key-wide one.
    assert await admitted(limiter, [key_wide], 5) == 3


def test_headline_reports_the_tightest_scope_in_openai_format() -> None:
    scopes = [LimitScope("{k}", Limits(rpm=60, tpm=1000)), LimitScope("{k}:m", Limits(rpm=10))]
    states = [ScopeState(3, 250, 59.5), ScopeState(9, 0, 0.02)]
    assert as_text(headline(scopes, states)) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "59.5s",
    }


def test_headline_of_one_scope_matches_the_general_rule() -> None:
    scope = LimitScope("{k}", Limits(rpm=60, tpm=1000, max_concurrent=2))
    state = ScopeState(61, 1200, 1.25)
    assert headline([scope], [state]) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"0"),  # never negative
        (b"x-ratelimit-reset-requests", b"1.25s"),
        (b"x-ratelimit-limit-tokens", b"1000"),
        (b"x-ratelimit-remaining-tokens", b"0"),
        (b"x-ratelimit-reset-tokens", b"1.25s"),
    ]
    assert headline([LimitScope("{k}", Limits(max_concurrent=2))], [state]) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0004, "1ms"), (0.25, "250ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s")],
)
def test_durations_use_openai_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_token_estimate_counts_prompt_and_completion_budget() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50, "n": 2}
    assert estimate_tokens(chat, 512) == (400 + 16) // 4 + 100
    assert estimate_tokens({"prompt": "abcd" * 10}, 512) == 10 + 512
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 84}]}]}
    assert estimate_tokens(parts | {"max_completion_tokens": 7}, 512) == 25 + 7


async def test_concurrent_decisions_batched_together_stay_exact(limiter: LimiterBackend) -> None:
    scopes = [scope(rpm=20, max_concurrent=30)]
    decisions = await asyncio.gather(*(limiter.admit(scopes, f"r{i}", 0, LEASE) for i in range(50)))
    assert sum(d.admitted for d in decisions) == 20
    assert [d.admitted for d in decisions] == [True] * 20 + [False] * 30  # in arrival order


async def test_the_script_is_reloaded_after_redis_forgets_it(redis_url: str) -> None:
    import redis.asyncio as aioredis

    link = RedisLink(redis_url, timeout_s=1.0, retry_s=0.1)
    limiter = RedisLimiter(link, prefix=f"test:{uuid.uuid4().hex}:", window_s=WINDOW)
    assert (await limiter.admit([scope(rpm=2)], "a", 0, LEASE)).admitted
    admin = aioredis.Redis.from_url(redis_url)
    await admin.script_flush()
    await admin.aclose()
    assert (await limiter.admit([scope(rpm=2)], "b", 0, LEASE)).admitted
    assert not (await limiter.admit([scope(rpm=2)], "c", 0, LEASE)).admitted
    await link.close()


def test_scopes_memo_derives_once_per_tuple_and_starts_over_past_its_limit() -> None:
    derived: list[int] = []

    def derive(scopes: Sequence[LimitScope]) -> int:
        derived.append(len(scopes))
        return len(derived)

    memo = ScopesMemo(derive, limit=2)
    first, twin = (LimitScope("{a}", Limits(rpm=1)),), (LimitScope("{a}", Limits(rpm=1)),)
    assert memo.get(first) == memo.get(first) == 1  # the same tuple: worked out once
    assert memo.get(twin) == 2  # an equal but distinct tuple is its own entry
    memo.get((LimitScope("{b}", Limits()),))  # a third entry: the memo starts over
    assert memo.get(first) == 4


async def tokens_in_window(limiter: LimiterBackend, scopes: list[LimitScope]) -> int:
    """The tokens counted in the window now (a probe that reserves none)."""
    probe = await limiter.admit(scopes, uuid.uuid4().hex, 0, LEASE)
    return probe.states[0].tokens


async def test_the_output_granted_is_what_the_budget_leaves(limiter: LimiterBackend) -> None:
    scopes = [scope(tpm=100)]
    first = await limiter.admit(scopes, "a", 10, LEASE, 50, 1)
    assert (first.admitted, first.granted, first.states[0].tokens) == (True, 50, 60)
    second = await limiter.admit(scopes, "b", 10, LEASE, 50, 1)
    assert (second.admitted, second.granted, second.states[0].tokens) == (True, 30, 100)
    third = await limiter.admit(scopes, "c", 10, LEASE, 50, 1)
    assert not third.admitted and third.refused == "tokens" and third.granted == 0
    assert 0 < third.retry_after_s <= WINDOW + BUCKET
    assert third.states[0].tokens == 100


async def test_every_choice_is_reserved(limiter: LimiterBackend) -> None:
    """Eight prompts asking for 300 tokens each on a 2000-token limit: each may have
    (2000 - 8) // 8 = 249, and the reservation is all of it."""
    scopes = [scope(tpm=2000)]
    decision = await limiter.admit(scopes, "a", 8, LEASE, 300, 8)
    assert decision.admitted and decision.granted == 249
    assert decision.states[0].tokens == 8 + 8 * 249
    refused = await limiter.admit(scopes, "b", 8, LEASE, 300, 8)
    assert refused.refused == "tokens" and refused.retry_after_s > 0


async def test_a_prompt_leaving_no_token_per_choice_is_never_admitted(
    limiter: LimiterBackend,
) -> None:
    never = await limiter.admit([scope(tpm=100)], "a", 93, LEASE, 10, 8)
    assert never.refused == "tokens" and never.retry_after_s == NEVER
    just = await limiter.admit([scope(tpm=100)], "b", 92, LEASE, 10, 8)
    assert just.admitted and just.granted == 1 and just.states[0].tokens == 100


async def test_the_tightest_token_scope_sets_the_grant(limiter: LimiterBackend) -> None:
    key_wide = LimitScope("{g}", Limits(tpm=1000))
    per_model = LimitScope("{g}:m", Limits(rpm=10, tpm=100))
    decision = await limiter.admit([key_wide, per_model], "a", 20, LEASE, 500, 2)
    assert decision.granted == 40  # (100 - 20) // 2, not (1000 - 20) // 2
    assert [s.tokens for s in decision.states] == [100, 100]
    # Requests are counted where an rpm applies only.
    assert [s.requests for s in decision.states] == [0, 1]


async def test_a_settlement_after_its_window_still_lands(limiter: LimiterBackend) -> None:
    """A charge above the reservation counts from when it arrives; a refund whose
    reservation has left the window has nothing left to take back."""
    scopes = [scope(tpm=1000)]
    over = await limiter.admit(scopes, "a", 100, LEASE)
    under = await limiter.admit(scopes, "b", 100, LEASE)
    deadline = time.monotonic() + 5 * WINDOW
    while await tokens_in_window(limiter, scopes) != 0:  # both reservations have left
        assert time.monotonic() < deadline, "the reservations never left the window"
        await asyncio.sleep(0.02)
    limiter.settle(scopes, "a", 100, 300, over.at)
    limiter.settle(scopes, "b", 100, 10, under.at)
    assert await tokens_in_window(limiter, scopes) == 200


async def test_a_settlement_in_its_window_goes_to_its_own_bucket(limiter: LimiterBackend) -> None:
    """The refund leaves the window with the reservation it corrects: once the first
    request's bucket has gone, only the second one's tokens are counted."""
    scopes = [scope(tpm=1000)]
    first = await limiter.admit(scopes, "a", 300, LEASE)
    await asyncio.sleep(WINDOW / 2)
    assert (await limiter.admit(scopes, "b", 50, LEASE)).admitted
    limiter.settle(scopes, "a", 300, 100, first.at)
    assert await tokens_in_window(limiter, scopes) == 150
    deadline = time.monotonic() + 5 * WINDOW
    while (tokens := await tokens_in_window(limiter, scopes)) != 50:
        assert tokens == 150 and time.monotonic() < deadline, tokens
        await asyncio.sleep(0.02)


async def test_no_counting_lasts_less_than_the_window(limiter: LimiterBackend) -> None:
    """Buckets are a sixtieth of the window: a request counts for the whole window
    (never less), and is gone one bucket after it at the latest."""
    scopes = [scope(rpm=1)]
    admitted_at = time.monotonic()
    assert (await limiter.admit(scopes, "a", 0, LEASE)).admitted
    while not (await limiter.admit(scopes, uuid.uuid4().hex, 0, LEASE)).admitted:
        assert time.monotonic() - admitted_at < WINDOW * 2, "never counted out"
        await asyncio.sleep(0.005)
    counted = time.monotonic() - admitted_at
    assert WINDOW - 0.005 <= counted <= WINDOW + BUCKET + 0.1, counted
