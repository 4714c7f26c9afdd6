"""Integers beyond 64 bits in a chat, completions or embeddings body reach the engine
exactly as written whenever the gateway writes the body anew: a renamed model, a
rollout's variant, the output cap of a key with a token limit, a clamped priority, the
usage request of a stream. Before, each such rewrite carried orjson's float
(``1.2345678901234568e+23``), the integer's precision silently lost. A field the
gateway reads itself (``max_tokens``, ``n``, ``seed``) holding one is a 400 naming it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config.rollouts import RolloutSettings
from gateway.config.settings import Settings
from gateway.errors import InvalidRequestError
from gateway.pipeline.assembly import routing_table
from gateway.pipeline.plan import CHAT, COMPLETIONS, EMBEDDINGS, RequestPlanner
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import EventStream
from gateway.pool.engine_pool import EnginePool
from gateway.rollouts.choice import VariantChooser
from gateway.rollouts.contracts import ConfigWeights
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import (
    AUTH,
    KEY,
    MODEL,
    STREAM_EVENTS,
    completion,
    drain,
    world,
)

TOOLS = (
    b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": '
    b'"object", "properties": {"n": {"type": "integer", "maximum": 18446744073709551616, '
    b'"minimum": -9223372036854775809, "multipleOf": 123456789012345678901234567890}}}}}]'
)


def chat(extra: bytes = b"") -> bytes:
    """A chat body with :data:`TOOLS` (and ``extra``, JSON members), as a client writes it."""
    return (
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, '
        + TOOLS
        + extra
        + b"}"
    )


def assert_exact(body: bytes) -> None:
    assert b'"maximum":18446744073709551616' in body
    assert b'"minimum":-9223372036854775809' in body
    assert b'"multipleOf":123456789012345678901234567890' in body
    assert b"e+" not in body


def ok(_: FakeRequest) -> Scripted:
    return Scripted(body=completion())


def keyed(**limits: Any) -> dict[str, Any]:
    return {"enabled": True, "keys": [{"name": "team", "key": KEY, **limits}]}


async def test_a_renamed_model_carries_the_integers_exactly() -> None:
    models = [{"name": MODEL, "endpoints": ["http://engine-a"], "upstream_model": "org/served"}]
    w = world(ok, auth=keyed(), models=models)
    await w.ask(chat())
    sent = w.upstream.requests[0].body
    assert orjson.loads(sent)["model"] == "org/served"  # rewritten
    assert_exact(sent)


async def test_the_output_cap_of_a_token_limited_key_carries_them_exactly() -> None:
    w = world(ok, auth=keyed(tpm=1000))
    await w.ask(chat(b', "max_tokens": 5000'))
    sent = w.upstream.requests[0].body
    assert orjson.loads(sent)["max_tokens"] < 1000  # the gateway's cap, written in place
    assert_exact(sent)


async def test_a_clamped_priority_carries_them_exactly() -> None:
    w = world(ok, auth=keyed(priority=5))
    await w.ask(chat(b', "priority": -3'))
    sent = w.upstream.requests[0].body
    assert orjson.loads(sent)["priority"] == 5  # never earlier than the key's tier
    assert_exact(sent)


async def test_a_streams_usage_request_carries_them_exactly() -> None:
    w = world(lambda _: Scripted(events=STREAM_EVENTS), auth=keyed(tpm=100_000))
    result = await w.ask(chat(b', "stream": true, "max_tokens": 8'))
    assert isinstance(result, EventStream)
    await drain(result)
    sent = w.upstream.requests[0].body
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True}
    assert_exact(sent)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, chat()),
        (COMPLETIONS, b'{"model": "r", "prompt": "hi", ' + TOOLS + b"}"),
        (EMBEDDINGS, b'{"model": "r", "input": "hi", ' + TOOLS + b"}"),
    ],
    ids=["chat", "completions", "embeddings"],
)
def test_a_rollouts_variant_carries_them_exactly(route: Any, body: bytes) -> None:
    rollout = RolloutSettings.model_validate(
        {"model": "r", "variants": [{"model": "a", "weight": 1}]}
    )
    settings = Settings.model_validate(
        {"models": [{"name": "a", "endpoints": ["http://e"], "upstream_model": "org/a"}]}
    )
    planner = RequestPlanner(
        {m.name: m for m in settings.models},
        EnginePool({"a": ("http://e",)}),
        routing_table(settings),
        rollouts=VariantChooser([rollout], ConfigWeights([rollout])),
    )
    parsed = planner.parse(route, body.replace(b'"model": "m"', b'"model": "r"'), None)
    assert (parsed.model, orjson.loads(parsed.payload)["model"]) == ("a", "org/a")
    assert_exact(parsed.payload)


async def test_two_bodies_differing_only_in_a_big_integer_are_two_cache_entries() -> None:
    w = world(ok)
    meta = RequestMeta("req-1", AUTH, None, None)
    await w.service.handle(CHAT, chat(), meta)
    other = chat().replace(b"18446744073709551616", b"18446744073709551617")  # same float
    assert orjson.loads(other) == orjson.loads(chat())  # what orjson alone would key
    await w.service.handle(CHAT, other, meta)
    assert len(w.upstream.requests) == 2  # a miss: not the first one's answer
    await w.service.handle(CHAT, other, meta)
    assert len(w.upstream.requests) == 2  # the same one again: a hit


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n", "seed"])
@pytest.mark.parametrize("value", [b"18446744073709551616", b"-9223372036854775809"])
async def test_a_field_the_gateway_reads_beyond_64_bits_is_a_400(field: str, value: bytes) -> None:
    w = world(ok)
    with pytest.raises(InvalidRequestError) as refused:
        await w.ask(chat(b', "%s": %s' % (field.encode(), value)))
    assert refused.value.param == field
    assert not w.upstream.requests
