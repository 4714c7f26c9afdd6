"""A large create body is decoded off the event loop, as a chat body is
(:meth:`RequestPlanner.offloads`): decoded on it, a multi-MB ``POST /v1/responses``
stalled every other client of the worker. Its integers beyond 64 bits are read
exactly only when a write shows one (``e+``), as chat's are: before, every body with
a run of 19 digits (in a string too) was parsed a second time by the stdlib parser."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

import gateway.pipeline.responses as responses_module
import gateway.protocol.exact_json as exact_json
from gateway.pipeline.plan import OFFLOAD_BYTES
from tests.unit.pipeline.responses_world import KEY, MODEL, responses_world


def _recording_decoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    threads: list[int] = []
    decode = responses_module.decode_json_object  # type: ignore[attr-defined]

    def recording(raw: bytes) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return decode(raw)

    monkeypatch.setattr(responses_module, "decode_json_object", recording)
    return threads


async def test_a_large_create_body_is_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = _recording_decoder(monkeypatch)
    world = responses_world()
    principal = await world.service.caller(f"Bearer {KEY}")
    large = orjson.dumps({"model": MODEL, "input": "x" * (OFFLOAD_BYTES + 1)})
    small = orjson.dumps({"model": MODEL, "input": "hi"})
    await world.service.create(large, principal, "req-1", None)
    await world.service.create(small, principal, "req-2", None)
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread  # unfixed: decoded here, on the loop
    assert threads[1] == loop_thread  # a small one costs no thread hop
    assert len(world.sent) == 2


async def test_a_body_without_big_integers_is_never_read_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[bytes] = []
    exact_reading = exact_json._exact_reading

    def recording(raw: bytes) -> Any:
        reads.append(raw)
        return exact_reading(raw)

    monkeypatch.setattr(exact_json, "_exact_reading", recording)
    world = responses_world()
    principal = await world.service.caller(f"Bearer {KEY}")
    digits = b'{"model": "m", "input": "order 12345678901234567890123 shipped"}'
    await world.service.create(digits, principal, "req-1", None)
    assert reads == []  # unfixed: the body was parsed a second time, up front
    big = b'{"model": "m", "input": "hi", "x_n": 123456789012345678901234567890}'
    await world.service.create(big, principal, "req-2", None)
    assert reads == [big]  # one that shows one is read exactly where it is written
