"""An entry and the output cap of the request it would answer (:meth:`Entry.serves`,
:meth:`ResponseCache.finish_lookup`): never more completion tokens than the cap, never
an answer the gateway's own cap cut to a request that may have more; entries keep the
counts they need, and those of a vgate that did not keep them read as unknown."""

from __future__ import annotations

import pytest

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.cache.entry import Entry, usage_event_completion, usage_event_span
from gateway.cache.response_cache import ResponseCache
from gateway.config.cache import CacheSettings
from gateway.observability.metrics import GatewayMetrics

BODY = b'{"id":"x","choices":[]}'


def entry(completion: int | None, cap: int | None = None) -> Entry:
    made = Entry(False, BODY, "x", None)
    made.completion, made.cap = completion, cap
    return made


@pytest.mark.parametrize(
    ("completion", "made_under", "cap", "serves"),
    [
        (16, None, None, True),  # made and asked without a cap
        (16, None, 16, True),
        (16, None, 40, True),
        (16, None, 8, False),  # more tokens than this request was granted
        (None, None, 8, False),  # unknown: it may hold more
        (None, None, None, True),  # no cap: nothing to exceed
        (8, 8, 8, True),  # cut by the same cap: the same answer
        (8, 8, 5, False),
        (8, 8, None, False),  # cut by the gateway's cap: uncapped, the engine says more
        (8, 8, 20, False),
        (5, 8, None, True),  # stopped before the gateway's cap: it cut nothing
        (5, 8, 20, True),
        (5, 8, 5, True),
        (5, 8, 4, False),
        (16, 8, 8, True),  # several choices under the cap: none holds more than 8
        (16, 8, 6, False),
    ],
)
def test_an_entry_serves_a_request_its_cap_would_not_change(
    completion: int | None, made_under: int | None, cap: int | None, serves: bool
) -> None:
    assert entry(completion, made_under).serves(cap) is serves


def test_entries_keep_their_counts_and_older_ones_read_as_unknown() -> None:
    kept = entry(7, 8)
    assert Entry.decode(kept.encode()) == kept
    older = kept.encode().replace(b',"completion":7,"cap":8', b"")
    assert b'"cap"' not in older
    decoded = Entry.decode(older)
    assert decoded is not None and (decoded.completion, decoded.cap) == (None, None)
    for bad in (b'"completion":-1', b'"completion":true', b'"completion":"7"'):
        odd = Entry.decode(kept.encode().replace(b'"completion":7', bad))
        assert odd is not None and odd.completion is None


def test_a_streams_completion_count_is_read_from_its_usage_event() -> None:
    events = (
        b'data: {"id":"s","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'data: {"id":"s","choices":[],"usage":{"prompt_tokens":2,"total_tokens":5,'
        b'"completion_tokens":3}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert usage_event_completion(events, usage_event_span(events)) == 3
    assert usage_event_completion(events, None) is None


def cache() -> ResponseCache:
    settings = CacheSettings(enabled=True)
    return ResponseCache(settings, {}, MemoryEntryStore(1 << 20), GatewayMetrics())


async def test_a_longer_entry_is_a_miss_and_is_not_overwritten() -> None:
    """The request's own answer, cut by its cap, is not stored over the longer one."""
    responses = cache()
    plan = responses.plan("chat", False, "m", {"temperature": 0}, "a", None)
    responses.store("m", plan, entry(16))
    _, lookup = responses.begin_lookup("m", plan)
    after, found = await responses.finish_lookup("m", plan, lookup, 8)
    assert found is None and after.key == plan.key and not after.store
    _, lookup = responses.begin_lookup("m", plan)
    after, found = await responses.finish_lookup("m", plan, lookup, 16)
    assert found is not None and found.completion == 16 and after.store


async def test_an_entry_the_gateway_cut_is_a_miss_and_replaced() -> None:
    responses = cache()
    plan = responses.plan("chat", False, "m", {"temperature": 0}, "a", None)
    responses.store("m", plan, entry(8, 8))
    _, lookup = responses.begin_lookup("m", plan)
    after, found = await responses.finish_lookup("m", plan, lookup, None)
    assert found is None and after.store  # the fuller answer takes its place
