"""Bodies below the old 64 KiB line are charged for what they take decoded, too.

A 64 KiB body of ``[{},{},...]`` decodes into 1.6 MB, held as long as its request:
unmetered, 300 of them at once took a worker +496 MiB whatever
``server.max_body_bytes_in_flight`` said.
"""

from __future__ import annotations

from starlette.types import Message

from gateway.errors import OverloadedError
from gateway.http.body_budget import (
    MAX_EXPANSION,
    SCANNED_BODY_BYTES,
    SMALL_BODY_BYTES,
    BodyBudget,
    decoded_bytes,
)
from gateway.http.context import read_body

DENSE = b'{"model":"m","x":[' + b"{}," * 20_000 + b"{}]}"  # 60 KB, 1.6 MB decoded


def _receive(body: bytes):  # type: ignore[no-untyped-def]
    sent = [False]

    async def receive() -> Message:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _read(budget: BodyBudget, body: bytes):  # type: ignore[no-untyped-def]
    metered = budget.meter(_receive(body), len(body))
    await read_body(metered, 20_000_000, str(len(body)))
    return metered


def test_a_dense_body_under_64_kib_is_metered() -> None:
    assert len(DENSE) <= 64 * 1024
    assert decoded_bytes(DENSE) > 20 * len(DENSE)
    assert BodyBudget(1 << 30).meters(len(DENSE), True)
    assert SMALL_BODY_BYTES * MAX_EXPANSION * 1024 <= 160 * 1024 * 1024  # all small ones


async def test_with_room_a_mid_size_body_is_charged_its_most_without_a_scan() -> None:
    budget = BodyBudget(100_000_000)
    plain = b'{"model":"m","prompt":"' + b"x" * 10_000 + b'"}'
    metered = await _read(budget, plain)
    assert budget.held == len(plain) * MAX_EXPANSION
    metered.release()
    assert budget.held == 0


async def test_past_half_the_budget_bodies_are_charged_what_they_take() -> None:
    budget = BodyBudget(10_000_000)
    budget.held = 6_000_000  # others hold more than half
    plain = b'{"model":"m","prompt":"' + b"x" * 10_000 + b'"}'
    metered = await _read(budget, plain)
    assert budget.held - 6_000_000 == decoded_bytes(plain)  # a few percent, not 34x
    metered.release()
    assert budget.held == 6_000_000


async def test_dense_bodies_held_at_once_stay_within_the_budget() -> None:
    limit = 8 * 1024 * 1024
    budget = BodyBudget(limit)
    held, refused = [], 0
    for _ in range(20):
        metered = budget.meter(_receive(DENSE), len(DENSE))
        try:
            await read_body(metered, 20_000_000, str(len(DENSE)))
            held.append(metered)
        except OverloadedError:
            metered.release()  # as the middleware does once the 503 is sent
            refused += 1
        assert budget.held <= limit
    assert refused > 0
    assert len(held) * decoded_bytes(DENSE) <= limit
    assert len(DENSE) <= SCANNED_BODY_BYTES


def test_a_small_body_is_still_not_metered() -> None:
    assert not BodyBudget(1 << 30).meters(SMALL_BODY_BYTES, True)
    assert not BodyBudget(1 << 30).meters(1024, True)
