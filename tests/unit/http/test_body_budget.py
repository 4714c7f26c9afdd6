"""BodyBudget: large bodies held at once are bounded per worker; small ones are not metered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from fastapi import FastAPI
from starlette.types import Message

from gateway.config.sections import ServerSettings
from gateway.errors import OverloadedError, PayloadTooLargeError
from gateway.http.apps import public_app
from gateway.http.body_budget import (
    CONTAINER_BYTES,
    SMALL_BODY_BYTES,
    VALUE_BYTES,
    BodyBudget,
    decoded_bytes,
)
from gateway.http.context import read_body
from gateway.http.request_id import RequestIdMiddleware
from tests.unit.http.test_connections import Connection


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


def json_body(*parts: bytes) -> list[Message]:
    return [{"type": "http.request", "body": b"".join(parts), "more_body": False}]


async def test_a_body_is_charged_for_what_it_takes_once_decoded() -> None:
    """A 19 MiB list of ``{}`` took +584 MiB decoded (hostile-client hunt): such a body
    is charged for its objects, not its bytes; text and base64 cost their length."""
    budget = BodyBudget(10_000_000)
    image = b'{"image": "data:image/png;base64,' + b"QUJD" * 50_000 + b'"}'
    plain = budget.meter(receiver(json_body(image)), len(image))
    assert await read_body(plain, 20_000_000, str(len(image))) == image
    assert budget.held < len(image) + 2 * CONTAINER_BYTES + VALUE_BYTES
    bomb = b"[" + b"{}," * 30_000 + b"{}]"  # 90 KB: ~2 MB once decoded
    heavy = budget.meter(receiver(json_body(bomb)), len(bomb))
    await read_body(heavy, 20_000_000, str(len(bomb)))
    assert budget.held - decoded_bytes(image) >= 30_000 * (CONTAINER_BYTES + VALUE_BYTES)
    heavy.release()
    plain.release()
    assert budget.held == 0


async def test_a_body_too_heavy_decoded_is_413_and_one_that_does_not_fit_now_503() -> None:
    bomb = b"[" + b"{}," * 30_000 + b"{}]"
    small = BodyBudget(1_000_000)
    never = small.meter(receiver(json_body(bomb)), len(bomb))
    with pytest.raises(PayloadTooLargeError):
        await read_body(never, 20_000_000, str(len(bomb)))
    never.release()
    assert small.held == 0
    budget = BodyBudget(5_000_000)
    first = budget.meter(receiver(json_body(bomb)), len(bomb))
    await read_body(first, 20_000_000, str(len(bomb)))
    second = budget.meter(receiver(json_body(bomb)), len(bomb))
    with pytest.raises(OverloadedError):  # fits alone, not beside the first
        await read_body(second, 20_000_000, str(len(bomb)))
    second.release()
    first.release()
    assert budget.held == 0


@pytest.mark.parametrize("padding", [b"", b" ", b"\t", b" \t "])
async def test_a_content_length_with_whitespace_after_it_is_metered_by_its_value(
    padding: bytes,
) -> None:
    """The completion routes read ``content-length: 2 `` as 2 (llhttp hands the value on
    with its trailing whitespace, which is not part of it); the body budget read it as
    no length at all: a small body metered and charged as one sent chunked, and a
    declared body that cannot fit read before it was refused. The head's parse strips
    it now (head_fields.py), so the budget sees the value as the routes do."""
    budget = BodyBudget(SMALL_BODY_BYTES * 4)
    seen: list[int] = []
    refused: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await receive()
        except OverloadedError as error:
            refused.append(error.status)
        seen.append(budget.held)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def head(length: int) -> bytes:
        return b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: %d%s\r\n\r\n" % (length, padding)

    conn = Connection()
    conn.protocol.app = RequestIdMiddleware(app, budget)
    conn.send(head(2) + b"{}")
    await conn.settle()
    assert seen == [0] and refused == []  # small: not metered
    budget.held = SMALL_BODY_BYTES * 3  # others' bodies
    conn.send(head(SMALL_BODY_BYTES * 2))  # cannot fit: refused before any byte is read
    await conn.settle()
    assert refused == [503] and seen == [0, SMALL_BODY_BYTES * 3]


async def test_a_chunked_body_over_max_body_bytes_is_413_even_with_the_budget_nearly_full() -> None:
    """A chunked body's bytes are charged as they come: with the budget nearly full, the
    chunk that took it over answered 503 "try again", even when the body was already past
    ``server.max_body_bytes`` (the client's fault first: it will never be served)."""
    budget = BodyBudget(1000, max_body=300)
    budget.held = 700  # others' bodies
    over = budget.meter(receiver(chunks(200, 200)), None)  # 400 > 300, chunked
    with pytest.raises(PayloadTooLargeError) as refused:
        await read_body(over, 300, None)
    assert refused.value.status == 413
    over.release()
    budget.held = 800
    fits = budget.meter(receiver(chunks(150, 150)), None)  # within its limit: the budget's
    with pytest.raises(OverloadedError):
        await read_body(fits, 300, None)
    fits.release()
    assert budget.held == 800


def test_the_public_apps_budget_has_the_body_limit() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    server = ServerSettings(max_body_bytes=300_000, max_body_bytes_in_flight=1_000_000)
    budget = cast(Any, public_app(server, lifespan)).body_budget
    assert (budget.limit, budget.max_body) == (1_000_000, 300_000)
