"""What one tenant can learn about another through the pipeline, and what a hostile body
can do to it: request ids the engine sees, what cache headers say, deep and odd bodies."""

from __future__ import annotations

import logging

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.pipeline.plan import COMPLETIONS
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, Replay
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import AUTH, MODEL, chat_body, completion, world


def answers(_: FakeRequest) -> Scripted:
    return Scripted(body=completion())


async def test_the_engine_gets_the_gateways_request_id_never_the_clients() -> None:
    w = world(answers)
    for _ in range(2):
        meta = RequestMeta("client-chosen-id", AUTH, None, "no-store")
        await w.service.handle(COMPLETIONS, orjson.dumps({"model": MODEL, "prompt": "x"}), meta)
    ids = [r.headers["X-Request-Id"] for r in w.upstream.requests]
    assert all(i.startswith("vgate-") for i in ids)
    assert len(set(ids)) == 2  # one per request: two tenants' ids never meet in the engine


async def test_failover_keeps_the_engine_request_id() -> None:
    def first_fails(request: FakeRequest) -> Scripted:
        failing = request.url.startswith("http://engine-a")
        return Scripted(status=500) if failing else answers(request)

    w = world(first_fails, routing={"policy": "round_robin"})
    await w.ask(chat_body(), cache_control="no-store")
    await w.ask(chat_body(), cache_control="no-store")
    ids = [r.headers["X-Request-Id"] for r in w.upstream.requests]
    assert len(ids) > 2 and len(set(ids)) == 2  # a retried request keeps its id


def cache_headers(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {name: value for name, value in headers if name in (b"x-cache", b"age")}


async def test_per_key_answers_say_what_the_cache_did() -> None:
    w = world(answers)
    miss = await w.ask(chat_body())
    hit = await w.ask(chat_body())
    assert isinstance(miss, Answer) and isinstance(hit, Replay)
    assert cache_headers(miss.headers) == {b"x-cache": b"MISS"}
    assert cache_headers(hit.headers) == {b"x-cache": b"HIT", b"age": b"0"}


async def test_shared_answers_say_nothing_of_the_cache() -> None:
    w = world(answers, cache={"enabled": True, "scope": "shared"})
    miss = await w.ask(chat_body())
    hit = await w.ask(chat_body())
    bypass = await w.ask(chat_body(), cache_control="no-store")
    assert isinstance(hit, Replay) and len(w.upstream.requests) == 2
    for result in (miss, hit, bypass):
        assert isinstance(result, Answer | Replay)
        assert cache_headers(result.headers) == {}


@pytest.mark.parametrize("depth", [300, 1000])
async def test_deep_bodies_are_400_and_log_nothing(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    w = world(answers)
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":'
    body += b"[" * depth + b"]" * depth + b"}"
    with caplog.at_level(logging.DEBUG), pytest.raises(InvalidRequestError):
        await w.ask(body)
    assert caplog.records == []
    w.assert_nothing_held()


@pytest.mark.parametrize(
    "content", [[{"type": "text", "text": 5}], [{"type": "text", "text": {"a": [1]}}]]
)
async def test_odd_content_parts_under_prefix_affinity_are_forwarded(content: object) -> None:
    w = world(answers, routing={"policy": "prefix_affinity"})
    body = orjson.loads(chat_body())
    body["messages"] = [{"role": "user", "content": content}]
    result = await w.ask(orjson.dumps(body))
    assert isinstance(result, Answer) and result.status == 200
    w.assert_nothing_held()


async def test_numbers_beyond_64_bits_in_a_cached_request_are_forwarded() -> None:
    w = world(answers)
    body = chat_body()[:-1] + b',"extension":1e300,"other":99999999999999999999999}'
    result = await w.ask(body)
    assert isinstance(result, Answer) and result.status == 200
    assert isinstance(await w.ask(body), Replay)
