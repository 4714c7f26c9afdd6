"""Entries keep the answer's bytes; a replay swaps only the id (and drops a stream's
usage event when not asked for); other formats decode to None."""

from __future__ import annotations

import pytest

from gateway.cache.entry import Entry, find_answer_id, fresh_id, usage_event_span

BODY = b'{"id":"chatcmpl-abc123","object":"chat.completion","created":7,"choices":[]}'
EVENTS = (
    b'data: {"id":"chatcmpl-s1","created":7,"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    b'data: {"id":"chatcmpl-s1","created":7,"choices":[],"usage":{"total_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)


def test_a_json_replay_differs_only_in_its_id() -> None:
    entry = Entry(False, BODY, find_answer_id(BODY), 3)
    replay = entry.replay()
    assert entry.answer_id == "chatcmpl-abc123"
    assert b"chatcmpl-abc123" not in replay and replay.startswith(b'{"id":"chatcmpl-')
    assert replay.replace(replay[7:48], b"X") == BODY.replace(b"chatcmpl-abc123", b"X")
    assert entry.replay() != replay  # a fresh id every time


def test_a_stream_replay_keeps_every_event_and_strips_usage_on_request() -> None:
    span = usage_event_span(EVENTS)
    assert span is not None
    entry = Entry(True, EVENTS, find_answer_id(EVENTS), 3, span)
    full, bare = entry.replay(True), entry.replay(False)
    assert full.count(b"\n\n") == 3 and bare.count(b"\n\n") == 2
    assert b'"usage"' not in bare and bare.endswith(b"data: [DONE]\n\n")
    assert b"chatcmpl-s1" not in full and full.count(b'"created":7') == 2


def test_entries_round_trip_and_other_formats_are_misses() -> None:
    entry = Entry(True, EVENTS, "chatcmpl-s1", 3, usage_event_span(EVENTS), 12.5)
    assert Entry.decode(entry.encode()) == entry
    for raw in (b'{"v":1,"chat":true}', b"", b"vgate-entry/2\n{bad", b"vgate-entry/2\n[]\n"):
        assert Entry.decode(raw) is None


@pytest.mark.parametrize(("old", "prefix"), [("chatcmpl-x", "chatcmpl-"), ("embd-1", "embd-")])
def test_fresh_ids_keep_the_prefix(old: str, prefix: str) -> None:
    new = fresh_id(old)
    assert new.startswith(prefix) and new != old
