"""Admission's concurrency leases: renewed while a request runs, never for a ticket
that was dropped without being settled (in-memory backend, a clock we move)."""

from __future__ import annotations

import gc

from gateway.auth.authenticator import KeyDirectory
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.config.sections import RateLimitSettings, StaticKey
from gateway.errors import RateLimitError
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.admission import Admission

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
