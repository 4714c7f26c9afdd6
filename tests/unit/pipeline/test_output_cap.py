"""What the limiter reserved is what the engine may generate: on a key with a token
limit, the body the engine gets carries the granted output cap whenever it is lower
than the client's own or the client set none, and is left byte for byte alone
otherwise; a request the remaining budget shortened neither fills nor shares the
cache (issue #13)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson

from gateway.pipeline.plan import CHAT, COMPLETIONS, ModelRename, ParsedRequest, with_output_cap
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, EventStream
from gateway.routing.policies import RoutingPolicy
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import (
    AUTH,
    KEY,
    MODEL,
    STREAM_EVENTS,
    chat_body,
    completion,
    drain,
    world,
)


def ok(_: FakeRequest) -> Scripted:
    return Scripted(body=completion())


def keyed(tpm: int) -> dict[str, Any]:
    return {"enabled": True, "keys": [{"name": "team", "key": KEY, "tpm": tpm}]}


def parsed(body: dict[str, Any], payload: bytes | None = None) -> ParsedRequest:
    raw = orjson.dumps(body) if payload is None else payload
    policy: RoutingPolicy = None  # type: ignore[assignment]  # not used here
    return ParsedRequest(MODEL, False, body, raw, policy, None)


def test_a_client_asking_for_no_more_is_left_alone() -> None:
    request = parsed({"model": MODEL, "messages": [], "max_tokens": 40})
    assert with_output_cap(request, True, 40) is request
    chat = parsed({"model": MODEL, "messages": [], "max_completion_tokens": 10, "max_tokens": 99})
    assert with_output_cap(chat, True, 40) is chat  # the engine reads max_completion_tokens


def test_without_a_length_field_the_cap_is_appended_to_the_payload() -> None:
    raw = b'{"model": "m", "prompt": "hi"}\n'
    capped = with_output_cap(parsed(orjson.loads(raw), raw), False, 77)
    assert capped.payload == b'{"model": "m", "prompt": "hi","max_tokens":77}'
    expected = {"model": "m", "prompt": "hi", "max_tokens": 77}
    assert orjson.loads(capped.payload) == capped.body == expected


def test_every_other_field_of_the_request_is_carried_over() -> None:
    # A value of each field's type, each a distinct object (compiled code checks types).
    values: dict[str, Any] = {
        "model": "".join(["vari", "ant"]),
        "stream": True,
        "policy": object(),  # a Protocol: any object
        "affinity_key": b"affinity",
        "rename": ModelRename("served", "asked"),
        "rollout": "".join(["roll", "out"]),
    }
    assert values.keys() == {f.name for f in fields(ParsedRequest)} - {"body", "payload"}
    values |= {"body": {"model": MODEL, "prompt": "x"}, "payload": b'{"model":"m","prompt":"x"}'}
    request = ParsedRequest(**values)
    capped = with_output_cap(request, False, 9)
    for name in values.keys() - {"body", "payload"}:
        assert getattr(capped, name) is values[name], name


def test_fields_above_the_cap_or_null_are_lowered_and_reencoded() -> None:
    body = {"model": MODEL, "messages": [], "max_completion_tokens": 500, "max_tokens": None}
    capped = with_output_cap(parsed(body), True, 40)
    assert orjson.loads(capped.payload) == body | {"max_completion_tokens": 40, "max_tokens": 40}
    # Completions have no max_completion_tokens: the engine reads max_tokens.
    text = {"model": MODEL, "prompt": "x", "max_completion_tokens": 5}
    assert orjson.loads(with_output_cap(parsed(text), False, 40).payload)["max_tokens"] == 40


async def test_the_engine_gets_the_default_cap_when_the_client_set_none() -> None:
    w = world(ok, auth=keyed(100_000))
    raw = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(await w.ask(raw), Answer)
    sent = w.upstream.requests[0].body
    assert orjson.loads(sent)["max_tokens"] == 512  # ratelimit.default_max_tokens
    assert sent == raw[:-1] + b',"max_tokens":512}'


async def test_a_client_within_its_budget_is_forwarded_byte_for_byte() -> None:
    w = world(ok, auth=keyed(100_000))
    raw = chat_body()  # max_tokens: 8
    await w.ask(raw)
    assert w.upstream.requests[0].body == raw


async def test_a_shortened_request_gets_the_budget_and_bypasses_the_cache() -> None:
    w = world(ok, auth=keyed(1000))
    raw = chat_body(max_tokens=5000)
    first = await w.ask(raw)
    assert isinstance(first, Answer)
    prompt = (len("hi") + 16 + 3) // 4
    assert orjson.loads(w.upstream.requests[0].body)["max_tokens"] == 1000 - prompt
    assert (b"x-cache", b"BYPASS") in first.headers
    await w.ask(chat_body(max_tokens=10))  # the first was settled to its usage (5)
    assert orjson.loads(w.upstream.requests[1].body)["max_tokens"] == 10
    w.assert_nothing_held()


async def test_streams_get_the_cap_with_the_usage_request() -> None:
    w = world(lambda _: Scripted(events=STREAM_EVENTS), auth=keyed(100_000))
    raw = orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    result = await w.ask(raw)
    assert isinstance(result, EventStream)
    await drain(result)
    sent = orjson.loads(w.upstream.requests[0].body)
    assert sent["max_tokens"] == 512
    assert sent["stream_options"] == {"include_usage": True}


async def test_every_prompt_of_a_completions_list_is_reserved() -> None:
    w = world(ok, auth=keyed(2000))
    raw = orjson.dumps({"model": MODEL, "prompt": ["abcd"] * 8, "max_tokens": 300})
    meta = RequestMeta("req-1", AUTH, None, "no-store")
    await w.service.handle(COMPLETIONS, raw, meta)
    prompt = 8 * (4 + 8) // 4  # each listed prompt's text and its framing (2 tokens)
    assert orjson.loads(w.upstream.requests[0].body)["max_tokens"] == (2000 - prompt) // 8


async def test_the_served_name_and_the_cap_both_reach_the_engine() -> None:
    models = [{"name": MODEL, "endpoints": ["http://engine-a"], "upstream_model": "org/served"}]
    w = world(ok, auth=keyed(100_000), models=models)
    raw = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    result = await w.service.handle(CHAT, raw, RequestMeta("req-1", AUTH, None, None))
    assert isinstance(result, Answer)
    sent = orjson.loads(w.upstream.requests[0].body)
    assert (sent["model"], sent["max_tokens"]) == ("org/served", 512)
    assert orjson.loads(result.body)["model"] == MODEL
