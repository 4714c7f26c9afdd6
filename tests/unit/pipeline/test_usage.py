"""Reading token usage: from a whole body, and from the last event of a relayed
stream (stripped when the client did not ask for it, and only then)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.cache.entry import Entry, usage_event_span
from gateway.errors import UpstreamTimeoutError
from gateway.pipeline.usage import (
    UsageTap,
    body_usage,
    client_wants_usage,
    usage_tokens,
    with_usage_requested,
)
from gateway.upstream.fake import sse
from gateway.upstream.relay import StreamOutcome, relay_events
from tests.unit.upstream.test_relay import Failing, Ticks

DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def event(data: dict[str, Any]) -> bytes:
    return sse(data, done=False)


def content_chunk(text: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


USAGE_EVENT = event({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
CONTENT = event(content_chunk("hello"))


# -- whole bodies -----------------------------------------------------------------------


def test_usage_at_the_end_of_a_body() -> None:
    body = orjson.dumps({"id": "c1", "choices": [{"text": "hi"}], "usage": USAGE})
    assert body_usage(body) == 7


def test_a_body_without_usage() -> None:
    assert body_usage(orjson.dumps({"id": "c1", "choices": []})) is None
    assert body_usage(orjson.dumps({"id": "c1", "usage": None})) is None
    assert body_usage(b"not json") is None


def test_pretty_printed_usage() -> None:
    body = orjson.dumps({"choices": [], "usage": USAGE}, option=orjson.OPT_INDENT_2)
    assert b'"total_tokens": 7' in body
    assert body_usage(body) == 7
    assert body_usage(b'{"usage" : { "total_tokens" :\n 12 } }') == 12


def test_prompt_and_completion_without_a_total() -> None:
    body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert body_usage(body) == 7


def test_usage_mentioned_in_the_answer_text_is_not_usage() -> None:
    text = '"usage": {"total_tokens": 99}'
    body = orjson.dumps({"choices": [{"message": {"content": text}}], "usage": USAGE})
    assert body_usage(body) == 7
    assert body_usage(orjson.dumps({"choices": [{"message": {"content": text}}]})) is None


def test_usage_tokens_of_odd_objects() -> None:
    assert usage_tokens(USAGE) == 7
    assert usage_tokens({"prompt_tokens": 1, "completion_tokens": 2}) == 3
    assert usage_tokens({"prompt_tokens": 1}) is None
    assert usage_tokens(None) is None
    assert usage_tokens([1, 2]) is None


# -- streams ----------------------------------------------------------------------------


def test_the_tap_finds_usage_in_the_last_event_before_done() -> None:
    tap = UsageTap(strip=False)
    batch = CONTENT + USAGE_EVENT + DONE
    assert tap.inspect(batch) == batch
    assert tap.tokens == 7


def test_the_tap_strips_the_usage_event_when_asked() -> None:
    tap = UsageTap(strip=True)
    assert tap.inspect(CONTENT + USAGE_EVENT + DONE) == CONTENT + DONE
    assert tap.tokens == 7


def test_the_tap_strips_a_batch_that_is_only_the_usage_event() -> None:
    tap = UsageTap(strip=True)
    assert tap.inspect(CONTENT) == CONTENT
    assert tap.tokens is None
    assert tap.inspect(USAGE_EVENT) == b""  # [DONE] comes in the next batch
    assert tap.tokens == 7
    assert tap.inspect(DONE) == DONE


def test_the_tap_strips_nothing_else() -> None:
    tap = UsageTap(strip=True)
    for batch in (CONTENT, CONTENT + CONTENT, CONTENT + DONE, DONE):
        assert tap.inspect(batch) == batch
    assert tap.tokens is None


def test_content_that_mentions_usage_is_left_alone() -> None:
    tap = UsageTap(strip=True)
    talk = event(content_chunk('"usage": {"total_tokens": 99}, "choices":[]'))
    assert tap.inspect(talk + DONE) == talk + DONE
    assert tap.tokens is None


def test_a_chunk_with_choices_and_usage_is_not_the_usage_event() -> None:
    """vLLM's ``continuous_usage_stats`` puts usage on every chunk: those are content."""
    tap = UsageTap(strip=True)
    chunk = event(content_chunk("hi") | {"usage": USAGE})
    assert tap.inspect(chunk) == chunk
    nested = event(content_chunk("hi") | {"usage": USAGE, "extra": {"choices": []}})
    assert b'"choices":[]' in nested  # passes the byte search; the parse decides
    assert tap.inspect(nested) == nested
    assert tap.tokens is None


def spelled(event: bytes, space_after_data: bool, spaced_json: bool) -> bytes:
    """``event`` as another OpenAI server may write it."""
    data = orjson.loads(event[len(b"data: ") :])
    text = json.dumps(data).encode() if spaced_json else orjson.dumps(data)
    return (b"data: " if space_after_data else b"data:") + text + b"\n\n"


@pytest.mark.parametrize(
    ("space_after_data", "spaced_json"), [(False, False), (True, True), (False, True)]
)
def test_the_usage_event_is_found_however_the_server_spells_it(
    space_after_data: bool, spaced_json: bool
) -> None:
    """Python's ``json.dumps`` writes ``"choices": []``; SSE allows ``data:{...}``.
    Before, only vLLM's spelling was recognised: a client that never asked for usage
    got the event (``chunk.choices[0]`` raised), and the request kept its reservation."""
    usage = spelled(USAGE_EVENT, space_after_data, spaced_json)
    content = spelled(CONTENT, space_after_data, spaced_json)
    tap = UsageTap(strip=True)
    assert tap.inspect(content) == content
    assert tap.inspect(content + usage + DONE) == content + DONE
    assert tap.tokens == 7
    assert usage_event_span(content + usage + DONE) == (len(content), len(content + usage))


def test_only_the_last_event_of_a_batch_is_examined() -> None:
    tap = UsageTap(strip=True)
    batch = USAGE_EVENT + CONTENT
    assert tap.inspect(batch) == batch
    assert tap.tokens is None


# -- the request side -------------------------------------------------------------------


def test_usage_is_requested_without_losing_the_clients_options() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    assert orjson.loads(with_usage_requested(body))["stream_options"] == {"include_usage": True}
    assert body == {"model": "m", "stream": True}  # the parsed request is not changed

    # Usage in every chunk applies only with usage: the client did not get it, nor will it.
    own = {"stream": True, "stream_options": {"continuous_usage_stats": True, "x": 1}}
    assert orjson.loads(with_usage_requested(own))["stream_options"] == {
        "continuous_usage_stats": False,
        "include_usage": True,
        "x": 1,
    }
    refused = {"stream": True, "stream_options": {"include_usage": False}}
    assert orjson.loads(with_usage_requested(refused))["stream_options"] == {"include_usage": True}
    odd = {"stream": True, "stream_options": None}
    assert orjson.loads(with_usage_requested(odd))["stream_options"] == {"include_usage": True}


def test_client_wants_usage_as_vllm_decides_it() -> None:
    """vLLM 0.32 (``should_include_usage``, ``StreamOptions.include_usage = False``):
    usage only when ``include_usage`` is true; absent, null, or ``stream_options``
    present without it: no usage. Anything but a JSON boolean is refused by the schema
    (a 400) before this is asked, so a lax ``"yes"`` never reaches it."""
    assert client_wants_usage({"stream_options": {"include_usage": True}})
    assert not client_wants_usage({})
    assert not client_wants_usage({"stream_options": None})
    assert not client_wants_usage({"stream_options": {}})
    assert not client_wants_usage({"stream_options": {"include_usage": None}})
    assert not client_wants_usage({"stream_options": {"continuous_usage_stats": True}})
    assert not client_wants_usage({"stream_options": {"include_usage": False}})
    assert not client_wants_usage({"stream_options": {"include_usage": "no"}})
    assert not client_wants_usage({"stream_options": {"include_usage": 0}})
    assert not client_wants_usage({"stream_options": [{"include_usage": True}]})


def test_a_usage_event_with_counts_not_to_believe_is_stripped_all_the_same() -> None:
    """Review: a negative or oversized count was not noted (right) and the event then
    went to a client that had not asked for usage (wrong)."""
    for total in (-5, 10**12):
        bad = event({"id": "c1", "choices": [], "usage": {**USAGE, "total_tokens": total}})
        tap = UsageTap(strip=True)
        assert tap.inspect(CONTENT + bad + DONE) == CONTENT + DONE
        assert tap.tokens is None


FINGERPRINT = "vllm-0.32.0-07efd367"
FINISH = event(
    {"id": "c1", "object": "chat.completion.chunk",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
)  # fmt: skip
FINGERPRINTED_USAGE = event(
    {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE,
     "system_fingerprint": FINGERPRINT}
)  # fmt: skip


def _fingerprints(events: bytes) -> list[Any]:
    chunks = [orjson.loads(e[6:]) for e in events.split(b"\n\n") if e.startswith(b"data: {")]
    return [chunk.get("system_fingerprint") for chunk in chunks]


@pytest.mark.parametrize("apart", [False, True])
def test_a_stripped_usage_event_leaves_its_fingerprint_on_the_last_chunk(apart: bool) -> None:
    """Asked for usage, vLLM puts ``system_fingerprint`` on the usage event instead of
    the last chunk: a client that did not ask lost it with the event (fidelity hunt)."""
    tap = UsageTap(strip=True)
    batches = [CONTENT + FINISH, FINGERPRINTED_USAGE + DONE] if apart else [
        CONTENT + FINISH + FINGERPRINTED_USAGE + DONE
    ]  # fmt: skip
    out = b"".join(tap.inspect(batch) for batch in batches)
    assert _fingerprints(out) == [None, FINGERPRINT]
    assert out.endswith(DONE) and b'"usage"' not in out and tap.tokens == 7
    if apart:
        assert tap.inspect(CONTENT) == CONTENT  # nothing held any more


def test_a_kept_usage_event_keeps_its_fingerprint_where_it_is() -> None:
    tap = UsageTap(strip=False)
    batch = CONTENT + FINISH + FINGERPRINTED_USAGE + DONE
    assert tap.inspect(batch) == batch


def test_a_cached_stream_replayed_without_usage_keeps_the_fingerprint() -> None:
    events = CONTENT + FINISH + FINGERPRINTED_USAGE + DONE
    entry = Entry(True, events, "c1", 7, usage_event_span(events))
    assert _fingerprints(entry.replay(include_usage=False)) == [None, FINGERPRINT]
    assert _fingerprints(entry.replay(include_usage=True)) == [None, None, FINGERPRINT]


async def test_a_chunk_held_for_its_fingerprint_is_sent_when_the_stream_fails() -> None:
    """The finish chunk carries the last text: a stream that fails before the usage
    event must still deliver it, ahead of the error (review)."""
    tap = UsageTap(strip=True)
    error = UpstreamTimeoutError("the engine sent nothing for idle_s = 1 s")
    received: list[bytes] = []
    with pytest.raises(UpstreamTimeoutError):
        async for batch in relay_events(
            Failing([CONTENT + FINISH], error), StreamOutcome(), Ticks(), [tap]
        ):
            received.append(batch)
    assert b"".join(received) == CONTENT + FINISH
