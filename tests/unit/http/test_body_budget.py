"""BodyBudget: large bodies held at once are bounded per worker; small ones are not metered."""

from __future__ import annotations

import pytest
from starlette.types import Message

from gateway.errors import OverloadedError
from gateway.http.body_budget import SMALL_BODY_BYTES, BodyBudget


def chunks(*sizes: int) -> list[Message]:
    return [
        {"type": "http.request", "body": b"x" * size, "more_body": i < len(sizes) - 1}
        for i, size in enumerate(sizes)
    ]


def receiver(messages: list[Message]):  # type: ignore[no-untyped-def]
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    return receive


def test_only_large_or_undeclared_bodies_are_metered() -> None:
    budget = BodyBudget(10_000_000)
    assert not budget.meters(SMALL_BODY_BYTES, True)
    assert budget.meters(SMALL_BODY_BYTES + 1, True)
    assert budget.meters(None, True)  # chunked
    assert not budget.meters(None, False)  # GET


async def test_bytes_are_held_until_released() -> None:
    budget = BodyBudget(1000)
    first = budget.meter(receiver(chunks(300, 300)), None)
    await first()
    await first()
    assert budget.held == 600
    second = budget.meter(receiver(chunks(300, 300)), None)
    await second()
    with pytest.raises(OverloadedError) as refused:
        await second()  # 1,200 > 1,000
    assert refused.value.headers["Retry-After"] == "1"
    assert refused.value.status == 503
    second.release()
    first.release()
    first.release()  # idempotent
    assert budget.held == 0


async def test_a_declared_body_that_cannot_fit_is_refused_before_any_read() -> None:
    budget = BodyBudget(1000)
    holder = budget.meter(receiver(chunks(600)), 600)
    await holder()
    late = budget.meter(receiver(chunks(500)), 500)
    with pytest.raises(OverloadedError):
        await late()
    assert budget.held == 600  # nothing of it was read
    holder.release()
    fits = budget.meter(receiver(chunks(500)), 500)
    assert (await fits())["body"] == b"x" * 500
