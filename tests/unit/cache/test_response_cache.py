"""Tenancy, routes and forms in the response cache: entries per key by default, a shared
cache that tells nothing, a chat request never answered with a text completion, a stream
never with a JSON body, embeddings cached whatever their sampling fields say."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.cache.entry import Entry
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.config.cache import CacheSettings
from gateway.config.models import ModelSettings
from gateway.observability.metrics import GatewayMetrics

BODY: dict[str, Any] = {"model": "m", "temperature": 0, "prompt": "hi", "messages": []}


def cache(**settings: Any) -> ResponseCache:
    return ResponseCache(
        CacheSettings(enabled=True, **settings), {}, MemoryEntryStore(1 << 20), GatewayMetrics()
    )


def plan(
    responses: ResponseCache, key_name: str = "a", chat: bool = True, stream: bool = False
) -> CachePlan:
    return responses.plan("chat" if chat else "completions", stream, "m", BODY, key_name, None)


def test_entries_are_per_key_by_default_and_say_so() -> None:
    responses = cache()
    assert CacheSettings().scope == "per_key"
    assert plan(responses, "a").key != plan(responses, "b").key
    assert responses.discloses


def test_a_shared_cache_serves_every_key_and_discloses_nothing() -> None:
    responses = cache(scope="shared")
    assert plan(responses, "a").key == plan(responses, "b").key
    assert not responses.discloses


@pytest.mark.parametrize("scope", ["per_key", "shared"])
def test_the_route_is_part_of_the_key(scope: str) -> None:
    responses = cache(scope=scope)
    assert plan(responses, chat=True).key != plan(responses, chat=False).key


@pytest.mark.parametrize("scope", ["per_key", "shared"])
def test_the_form_is_part_of_the_key(scope: str) -> None:
    """A stream and a JSON answer are two entries; usage in every chunk is a third."""
    responses = cache(scope=scope)
    keys = {plan(responses, stream=False).key, plan(responses, stream=True).key}
    stats = responses.plan(
        "chat",
        True,
        "m",
        BODY | {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        "a",
        None,
    )
    keys.add(stats.key)
    assert len(keys) == 3


async def test_an_entry_of_the_other_form_is_never_replayed() -> None:
    """Defence in depth: even under the same key, a stream is no JSON answer."""
    responses = cache()
    json_plan = plan(responses)
    stream_entry = Entry(True, b"data: [DONE]\n\n", None, None)
    responses.store("m", json_plan, stream_entry)
    _, lookup = responses.begin_lookup("m", json_plan)
    _, entry = await responses.finish_lookup("m", json_plan, lookup)
    assert entry is None
    json_entry = Entry(False, b'{"id":"x"}', "x", 3)
    responses.store("m", json_plan, json_entry)
    _, lookup = responses.begin_lookup("m", json_plan)
    _, entry = await responses.finish_lookup("m", json_plan, lookup)
    assert entry is not None and entry.payload == b'{"id":"x"}' and entry.tokens == 3


async def test_an_entry_over_max_entry_bytes_is_not_stored() -> None:
    responses = cache(max_entry_bytes=1024)
    json_plan = plan(responses)
    responses.store("m", json_plan, Entry(False, b'{"x":"' + b"a" * 2000 + b'"}', None, None))
    _, lookup = responses.begin_lookup("m", json_plan)
    assert (await responses.finish_lookup("m", json_plan, lookup))[1] is None


async def test_an_entry_in_an_older_format_is_a_miss() -> None:
    """vgate's format 1 (a digest of the answer) left in the store reads as a miss."""
    store = MemoryEntryStore(1 << 20)
    responses = ResponseCache(CacheSettings(enabled=True), {}, store, GatewayMetrics())
    json_plan = plan(responses)
    assert json_plan.key is not None
    old = b'{"v":1,"chat":true,"created_at":1.0,"usage":null,"choices":[]}'
    store.put(json_plan.key, old, 60)
    _, lookup = responses.begin_lookup("m", json_plan)
    assert (await responses.finish_lookup("m", json_plan, lookup))[1] is None


def test_embeddings_are_cached_whatever_their_sampling_fields() -> None:
    responses = cache()
    body = {"model": "m", "input": ["a", "b"], "temperature": 1.0, "n": 3}
    embedding = responses.plan("embeddings", False, "m", body, "a", None)
    assert embedding.key is not None and not embedding.bypassed
    sampled = responses.plan("completions", False, "m", body | {"prompt": "x"}, "a", None)
    assert sampled.key is None and sampled.bypassed


def _lora_cache(path: str, base_cache: dict[str, Any] | None = None) -> ResponseCache:
    base = ModelSettings.model_validate(
        {
            "name": "basem",
            "engine": {"kind": "stub", "lora_modules": [{"name": "ad1", "path": path}]},
            "cache": base_cache,
        }
    )
    return ResponseCache(
        CacheSettings(enabled=True), {"basem": base}, MemoryEntryStore(1 << 20), GatewayMetrics()
    )


def _adapter_plan(responses: ResponseCache) -> CachePlan:
    return responses.plan("chat", False, "ad1", BODY, "a", None)


def test_a_lora_adapter_follows_its_base_models_cache_policy() -> None:
    """An adapter served by a managed engine has its base model's cache settings and
    fingerprint: off when the base's cache is off, and its old entries unmatched once
    its path changes (before, adapters fell to the global policy with no fingerprint
    and kept replaying answers of the old weights)."""
    assert _adapter_plan(_lora_cache("/adapters/v1", {"enabled": False})).key is None
    first = _adapter_plan(_lora_cache("/adapters/v1")).key
    assert first is not None
    assert _adapter_plan(_lora_cache("/adapters/v1")).key == first
    assert _adapter_plan(_lora_cache("/adapters/v2")).key != first
