"""An engine's ``error`` and ``response.failed`` events (and a failed non-streamed
response) reached the tenant verbatim: tracebacks, file paths, internal addresses.
Now their messages are told as chat's engine errors are: a server failure's replaced
whole, any other's kept less what is internal; the stored record holds the same."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.pipeline.results import Answer, EventStream
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.responses_world import KEY, engine_response, responses_world
from tests.unit.pipeline.world import drain

INTERNAL = (
    "bad grammar at http://10.1.2.3:8001/v1 in /opt/vllm/entrypoints/serve.py\n"
    'Traceback (most recent call last):\n  File "/opt/vllm/x.py", line 3'
)
LEAKS = (b"10.1.2.3", b"/opt/vllm", b"Traceback")


def _event(kind: str, **fields: Any) -> bytes:
    data = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _failed(request: FakeRequest, code: str) -> dict[str, Any]:
    return engine_response(
        request, status="failed", error={"code": code, "message": INTERNAL}, output=[]
    )


async def test_a_streamed_failure_and_its_record_keep_the_engines_internals() -> None:
    world = responses_world()

    def streamed(request: FakeRequest) -> Scripted:
        error = _event("error", code="invalid_prompt", message=INTERNAL, param=None)
        failed = _event("response.failed", response=_failed(request, "server_error"))
        return Scripted(events=[error, failed])

    world.upstream.handler = streamed
    principal = await world.service.caller(f"Bearer {KEY}")
    raw = b'{"model": "m", "input": "hi", "stream": true}'
    result = await world.service.create(raw, principal, "r1", None)
    assert isinstance(result, EventStream)
    relayed = await drain(result)
    assert b"response.failed" in relayed and b'"invalid_prompt"' in relayed
    assert not any(leak in relayed for leak in LEAKS)  # unfixed: all three
    assert b"bad grammar at <engine>" in relayed  # a client error keeps its words
    data = relayed.split(b"event: response.failed\ndata: ", 1)[1].split(b"\n\n")[0]
    response_id = orjson.loads(data)["response"]["id"]
    stored = await world.service.retrieve(response_id, principal)
    assert b"failed" in stored.body and not any(leak in stored.body for leak in LEAKS)


async def test_a_failed_response_keeps_the_engines_internals() -> None:
    world = responses_world(lambda request: _failed(request, "invalid_prompt"))
    principal = await world.service.caller(f"Bearer {KEY}")
    result = await world.service.create(b'{"model": "m", "input": "hi"}', principal, "r", None)
    assert isinstance(result, Answer)
    answer = orjson.loads(result.body)
    assert answer["status"] == "failed"
    assert answer["error"]["message"] == "bad grammar at <engine> in <path>"
    stored = await world.service.retrieve(answer["id"], principal)
    assert not any(leak in stored.body for leak in LEAKS)


async def test_a_large_answer_that_is_no_json_counts_against_the_engine() -> None:
    """The forwarder checks an answer over 64 KiB by its ends only; the Responses route
    found such garbage itself, a 502 the engine's breaker never heard of (its answer
    had been counted a success). Now the forwarder parses the route's answer whole:
    the engine's failure, as a small one's is, and parsed once (not again by the
    route)."""
    world = responses_world()
    world.upstream.handler = lambda request: Scripted(body=b"{" + b"x" * (70 << 10) + b"}")
    principal = await world.service.caller(f"Bearer {KEY}")
    with pytest.raises(UpstreamError) as failed:
        await world.service.create(b'{"model": "m", "input": "hi"}', principal, "r1", None)
    assert failed.value.status == 502 and "not valid JSON" in failed.value.message
    engine = world.service._pool._endpoints["http://engine-a"]
    assert engine.failures == 1  # unfixed: 0 (its answer counted a success)
