"""The in-memory limiter's state follows the window, not the traffic: at most one
bucket per sixtieth of the window for a busy scope, and nothing at all for a scope
that has been idle for a window (a clock we move)."""

from __future__ import annotations

from gateway.backends.memory.limiter import MemoryLimiter
from gateway.ratelimit.limits import Limits, LimitScope


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_busy_scope_holds_at_most_61_buckets() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    scopes = [LimitScope("{busy}", Limits(rpm=10**9, tpm=10**12))]
    most = 0
    for index in range(30_000):  # ten minutes, 50 requests a second
        clock.now += 0.02
        decision = await limiter.admit(scopes, f"r{index}", 10, 30.0, 20, 1)
        limiter.settle(scopes, f"r{index}", 30, 15, decision.at)
        most = max(most, len(limiter._windows["{busy}"].buckets))
    assert 60 <= most <= 61
    probe = await limiter.admit(scopes, "probe", 0, 30.0)
    # The last 60 s hold 3,000 requests of 15 tokens (and the probe).
    assert abs(probe.states[0].requests - 3001) <= 50
    assert probe.states[0].tokens == 15 * (probe.states[0].requests - 1)


async def test_an_idle_scope_is_forgotten_after_a_window() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    once = [LimitScope("{once}", Limits(rpm=5, max_concurrent=2))]
    decision = await limiter.admit(once, "a", 0, 30.0)
    limiter.settle(once, "a", 0, 0, decision.at)
    clock.now += 30
    await limiter.admit([LimitScope("{other}", Limits(rpm=5))], "b", 0, 30.0)
    assert "{once}" in limiter._windows  # its request still counts
    clock.now += 61
    await limiter.admit([LimitScope("{other}", Limits(rpm=5))], "c", 0, 30.0)
    assert "{once}" not in limiter._windows


async def test_a_lease_outlives_its_counters_until_it_runs_out() -> None:
    """A dead gateway's slot keeps its scope until the lease runs out, then frees."""
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    held = [LimitScope("{held}", Limits(max_concurrent=1))]
    assert (await limiter.admit(held, "a", 0, 100.0)).admitted  # never settled
    clock.now += 61
    await limiter.admit([LimitScope("{x}", Limits(rpm=5))], "b", 0, 30.0)
    assert "{held}" in limiter._windows
    assert not (await limiter.admit(held, "c", 0, 100.0)).admitted
    clock.now += 61
    await limiter.admit([LimitScope("{x}", Limits(rpm=5))], "d", 0, 30.0)
    assert "{held}" not in limiter._windows
    assert (await limiter.admit(held, "e", 0, 100.0)).admitted
