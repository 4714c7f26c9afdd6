"""Tenancy and routes in the response cache: entries per key by default, a shared cache
that tells nothing, and a chat request never answered with a text completion."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.cache.entry import Choice, Entry
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.config.sections import CacheSettings
from gateway.observability.metrics import GatewayMetrics

BODY: dict[str, Any] = {"model": "m", "temperature": 0, "prompt": "hi", "messages": []}


def cache(**settings: Any) -> ResponseCache:
    return ResponseCache(
        CacheSettings(enabled=True, **settings), {}, MemoryEntryStore(1 << 20), GatewayMetrics()
    )


def plan(responses: ResponseCache, key_name: str = "a", chat: bool = True) -> CachePlan:
    return responses.plan(chat, "m", BODY, key_name, None)


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


async def test_an_entry_of_the_other_route_is_never_replayed() -> None:
    """Defence in depth: even under the same key, a text completion is no chat answer."""
    responses = cache()
    chat_plan = plan(responses, chat=True)
    text_entry = Entry(chat=False, choices=[Choice(0, ["cached"], "stop")], usage=None)
    responses.store("m", chat_plan, text_entry)
    _, lookup = responses.begin_lookup("m", chat_plan)
    _, entry = await responses.finish_lookup("m", chat_plan, lookup)
    assert entry is None
    chat_entry = Entry(chat=True, choices=[Choice(0, ["cached"], "stop")], usage=None)
    responses.store("m", chat_plan, chat_entry)
    _, lookup = responses.begin_lookup("m", chat_plan)
    _, entry = await responses.finish_lookup("m", chat_plan, lookup)
    assert entry is not None and entry.choices[0].text == "cached"
