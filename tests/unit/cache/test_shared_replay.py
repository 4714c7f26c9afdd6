"""A shared cache's replays pass for fresh answers: an id of the fresh one's form and
this request's ``created``, rewritten in the bytes (JSON body and every SSE event);
a per-key cache's replays keep ``created`` and get ``<prefix>-<32 hex>`` as before."""

from __future__ import annotations

import re
import uuid

import pytest

from gateway.cache.entry import (
    Entry,
    IdSwap,
    find_answer_id,
    lookalike_id,
    restamp,
    usage_event_span,
)

NOW = 1_900_000_000
STUB_ID = "chatcmpl-" + "0a1b2c3d4e5f" * 2  # the stub's: chatcmpl-<24 hex>
VLLM_ID = "chatcmpl-vgate-" + "9f8e7d6c5b4a" * 2  # vLLM's: chatcmpl-<the X-Request-Id sent>
BODY = (
    b'{"id":"' + VLLM_ID.encode() + b'","object":"chat.completion","created":1700000000,'
    b'"model":"m","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"say \\"created\\":1700000000"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
)


def event(body: bytes) -> bytes:
    return b"data: " + body + b"\n\n"


def chunk(answer_id: str, created: int, delta: bytes) -> bytes:
    return event(
        b'{"id":"%s","object":"chat.completion.chunk","created":%d,"model":"m","choices":'
        b'[{"index":0,"delta":%s,"finish_reason":null}]}' % (answer_id.encode(), created, delta)
    )


EVENTS = (
    chunk(STUB_ID, 1700000000, b'{"role":"assistant","content":""}')
    + chunk(STUB_ID, 1700000000, b'{"content":"hel"}')
    + chunk(STUB_ID, 1700000000, b'{"content":"lo"}')
    + event(
        b'{"id":"%s","object":"chat.completion.chunk","created":1700000000,"model":"m",'
        b'"choices":[],"usage":{"total_tokens":5}}' % STUB_ID.encode()
    )
    + b"data: [DONE]\n\n"
)


def shape(answer_id: str) -> str:
    """What a tenant can compare between two random ids: where the hex goes."""
    return re.sub(r"[0-9a-f]", "h", answer_id)


def createds(data: bytes) -> list[bytes]:
    return re.findall(rb'"created": ?(\d+)', data)


def test_restamp_rewrites_the_created_of_a_json_body_and_nothing_generated() -> None:
    out = restamp(BODY, b"%d" % NOW)
    assert createds(out) == [b"%d" % NOW]
    assert b'say \\"created\\":1700000000' in out  # the model's text is not the key
    assert out == BODY.replace(b'"created":1700000000,', b'"created":%d,' % NOW)


def test_restamp_rewrites_every_event_of_a_stream() -> None:
    out = restamp(EVENTS, b"%d" % NOW)
    assert createds(out) == [b"%d" % NOW] * 4
    assert out == EVENTS.replace(b"1700000000", b"%d" % NOW)


@pytest.mark.parametrize(
    "data",
    [
        b'{"created":7,"a":{"created":17},"b":{"created": 7}}',  # 7 is a prefix of 17
        b'{"created": 1700000000, "x": 1}',  # a space after the colon
        b'data: {"created":5}\n\ndata: {"created":6}\n\n',  # values that differ
    ],
)
def test_restamp_rewrites_each_value_whatever_the_form(data: bytes) -> None:
    out = restamp(data, b"42")
    assert createds(out) == [b"42"] * len(createds(data))
    assert re.sub(rb"\d+", b"N", out) == re.sub(rb"\d+", b"N", data)  # nothing else moved


def test_restamp_leaves_bodies_without_a_created_alone() -> None:
    for data in (b'{"id":"x"}', b'{"created":null}', b""):
        assert restamp(data, b"42") == data


@pytest.mark.parametrize(
    ("old", "kept"),
    [
        (STUB_ID, "chatcmpl-"),
        (VLLM_ID, "chatcmpl-vgate-"),
        ("cmpl-vgate-" + "ab" * 12, "cmpl-vgate-"),
        ("embd-vgate-0123456789ab-1f", "embd-vgate-"),  # the gateway's older request ids
        ("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "chatcmpl-"),  # OpenAI's base 62
        ("c1", ""),
    ],
)
def test_a_lookalike_id_has_the_form_and_length_of_the_stored_one(old: str, kept: str) -> None:
    new = lookalike_id(old)
    assert new != old and new.startswith(kept) and len(new) == len(old)
    if re.fullmatch(r"[0-9a-f-]+", old.removeprefix(kept)):
        assert shape(new.removeprefix(kept)).strip("h-") == ""  # all hex, dashes kept
        assert [m.start() for m in re.finditer("-", new)] == [
            m.start() for m in re.finditer("-", old)
        ]
    else:
        kinds = [(c.isdigit(), c.islower(), c.isupper()) for c in old]
        assert kinds == [(c.isdigit(), c.islower(), c.isupper()) for c in new]


@pytest.mark.parametrize("dashed", [True, False])
def test_a_uuid4_id_gets_a_uuid4(dashed: bool) -> None:
    """Version and variant digits are fixed in a uuid4: random hex would not be one."""
    stored = uuid.uuid4()
    old = "cmpl-" + (str(stored) if dashed else stored.hex)
    new = lookalike_id(old)
    fresh = uuid.UUID(new.removeprefix("cmpl-"))
    assert fresh.version == 4 and fresh != stored and len(new) == len(old)
    assert ("-" in new.removeprefix("cmpl-")) == dashed


def test_a_disguised_json_replay_looks_like_a_fresh_answer() -> None:
    entry = Entry(False, BODY, find_answer_id(BODY), 5, fresh_at=NOW)
    out = entry.replay()
    new = find_answer_id(out)
    assert new is not None and new != VLLM_ID
    assert new.startswith("chatcmpl-vgate-") and shape(new) == shape(VLLM_ID)
    assert createds(out) == [b"%d" % NOW]
    assert out == BODY.replace(VLLM_ID.encode(), new.encode()).replace(
        b'"created":1700000000,', b'"created":%d,' % NOW
    )


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_disguised_stream_replay_looks_like_a_fresh_stream(include_usage: bool) -> None:
    entry = Entry(True, EVENTS, find_answer_id(EVENTS), 5, usage_event_span(EVENTS), fresh_at=NOW)
    out = entry.replay(include_usage)
    ids = set(re.findall(rb'"id":"([^"]+)"', out))
    assert len(ids) == 1 and STUB_ID.encode() not in ids
    new = ids.pop().decode()
    assert len(new) == len(STUB_ID) and shape(new) == shape(STUB_ID)
    assert createds(out) == [b"%d" % NOW] * (4 if include_usage else 3)
    assert (b'"usage"' in out) == include_usage and out.endswith(b"data: [DONE]\n\n")


def test_a_followers_swap_rewrites_each_batch_alike() -> None:
    """A follower of a shared flight gets the leader's batches one by one."""
    swap = IdSwap(STUB_ID, NOW)
    batches = [swap.apply(part + b"\n\n") for part in EVENTS.split(b"\n\n")[:-1]]
    out = b"".join(batches)
    assert len(set(re.findall(rb'"id":"([^"]+)"', out))) == 1 and STUB_ID.encode() not in out
    assert createds(out) == [b"%d" % NOW] * 4


def test_a_per_key_replay_is_as_before() -> None:
    """No ``fresh_at``: ``created`` as stored, the id ``<prefix>-<32 hex>``."""
    entry = Entry(False, BODY, find_answer_id(BODY), 5)
    out = entry.replay()
    new = find_answer_id(out)
    assert new is not None and re.fullmatch(r"chatcmpl-[0-9a-f]{32}", new)
    assert createds(out) == [b"1700000000"]


def test_fresh_at_is_never_stored() -> None:
    decoded = Entry.decode(Entry(False, BODY, VLLM_ID, 5, fresh_at=NOW).encode())
    assert decoded is not None and decoded.fresh_at is None
