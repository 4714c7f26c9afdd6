"""The cache key: which fields change it and which do not, and what may be cached."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.cache.key import KeyHasher, answer_form, cache_key, uncacheable_reason

BASE: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
    "max_tokens": 16,
}


def key(
    body: dict[str, Any], *, scope: str = "", route: str = "chat", fingerprint: str = "fp"
) -> str:
    return cache_key("v1", scope, route, "m", fingerprint, body)


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "hello!"}]},
        {"messages": [{"role": "system", "content": "hello"}]},
        {"temperature": 0.5},
        {"max_tokens": 17},
        {"top_p": 0.9},
        {"seed": 1},
        {"stop": ["\n"]},
        {"presence_penalty": 0.1},
        {"response_format": {"type": "json_object"}},
        {"some_engine_extension": True},
        {"stub": {"tokens": 3}},
    ],
    ids=lambda change: next(iter(change)),
)
def test_fields_that_change_the_output_change_the_key(change: dict[str, Any]) -> None:
    assert key(BASE | change) != key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "alice"},
        {"metadata": {"trace": "x"}},
        {"request_id": "r-1"},
        {"store": False},
        {"service_tier": "auto"},
        {"model": "alias-of-m"},
        {"temperature": 0.0},
        {"max_tokens": 16.0},
    ],
    ids=lambda change: "+".join(change),
)
def test_fields_that_do_not_change_the_output_keep_the_key(change: dict[str, Any]) -> None:
    assert key(BASE | change) == key(BASE)


def test_top_level_field_order_does_not_matter() -> None:
    """The engine reads the body's fields by name: their order never reaches it."""
    reordered = dict(reversed(list(BASE.items())))
    assert key(reordered) == key(BASE)


def _schema(*names: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"} for name in names}}


def _tools(*names: str) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": _schema(*names)}}]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"tools": _tools("a", "b")}, {"tools": _tools("b", "a")}),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": _schema("a")}}]},
         {"tools": [{"function": {"parameters": _schema("a"), "name": "f"}, "type": "function"}]}),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "s", "schema": _schema("a", "b")}}},
         {"response_format": {"type": "json_schema",
                              "json_schema": {"name": "s", "schema": _schema("b", "a")}}}),
        ({"guided_json": _schema("a", "b")}, {"guided_json": _schema("b", "a")}),
        ({"structured_outputs": {"json": _schema("a", "b")}},
         {"structured_outputs": {"json": _schema("b", "a")}}),
        ({"chat_template_kwargs": {"x": 1, "y": 2}}, {"chat_template_kwargs": {"y": 2, "x": 1}}),
        ({"messages": [{"role": "user", "content": "hello"}]},
         {"messages": [{"content": "hello", "role": "user"}]}),
    ],
    ids=["tool-schema", "tool-object", "json-schema", "guided-json", "structured-outputs",
         "chat-template-kwargs", "message"],
)  # fmt: skip
def test_key_order_inside_a_field_changes_the_key(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    """Inside a field the order can reach the engine: a template renders a tool's schema
    with ``tojson`` (insertion order), guided decoding writes properties in schema
    order. Two such requests are two prompts: never one entry."""
    assert key(BASE | first) != key(BASE | second)
    assert key(dict(reversed(list((BASE | first).items())))) == key(BASE | first)


def test_serving_fingerprint_namespace_scope_and_route_change_the_key() -> None:
    assert key(BASE, fingerprint="other") != key(BASE)
    assert key(BASE, scope="team-a") != key(BASE)
    assert key(BASE, route="completions") != key(BASE)
    assert cache_key("v2", "", "chat", "m", "fp", BASE) != key(BASE)
    assert cache_key("v1", "", "chat", "other-model", "fp", BASE) != key(BASE)


@pytest.mark.parametrize(
    "value", [1e300, -1e300, 1e23, 2.0**63, 18446744073709551615, -9223372036854775808, 0.5]
)
def test_numbers_beyond_64_bits_are_keyed_not_refused(value: float) -> None:
    """An integral float too large for a 64-bit integer stays a float in the key."""
    assert key(BASE | {"extension": value}) != key(BASE)
    assert key(BASE | {"extension": [value, {"deep": value}]})


@pytest.mark.parametrize(
    ("change", "cacheable"),
    [
        ({}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.8, "seed": 7}, True),
        ({"temperature": 0.8}, False),
        ({"temperature": None}, False),
        ({"n": 2}, False),
        ({"n": 1}, True),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, True),  # stored whole
        ({"logprobs": True}, True),
        ({"seed": True, "temperature": 1}, False),
    ],
)
def test_only_deterministic_single_answers_are_cached(
    change: dict[str, Any], cacheable: bool
) -> None:
    assert (uncacheable_reason(BASE | change, deterministic_only=True) is None) is cacheable


def test_sampled_answers_are_cached_when_the_model_allows() -> None:
    assert uncacheable_reason(BASE | {"temperature": 0.8}, deterministic_only=False) is None
    assert uncacheable_reason(BASE | {"n": 3}, deterministic_only=False) == "n > 1"


def test_the_hasher_gives_the_keys_cache_key_gives() -> None:
    """Its copied prefix digests change nothing: every combination, asked name or not,
    has the same key as :func:`cache_key`, also after it started over (limit 2)."""
    hasher = KeyHasher("v1", limit=2)
    combinations = [
        ("", "chat", "m", "fp", "json", ""),
        ("alice", "chat", "m", "fp", "json", ""),
        ("alice", "completions", "m", "fp", "sse", ""),
        ("alice", "chat", "variant", "fp2", "sse+stats", "rollout"),
    ]
    for _ in range(2):
        for scope, route, model, fp, form, asked in combinations:
            for body in (BASE, {**BASE, "temperature": 0.0, "user": "u", "seed": 7}):
                expected = cache_key("v1", scope, route, model, fp, body, form, asked)
                assert hasher.key(scope, route, model, fp, body, form, asked) == expected


def test_the_key_is_the_documented_digest() -> None:
    """SHA-256 of the parts, each ended by a zero byte, then the canonical body."""
    parts = b"".join(p + b"\x00" for p in (b"v1", b"", b"chat", b"json", b"m", b"fp"))
    body = b'{"max_tokens":16,"messages":[{"role":"user","content":"hello"}],"temperature":0}'
    reordered = {"temperature": 0.0, "messages": BASE["messages"], "max_tokens": 16}
    assert key(reordered) == hashlib.sha256(parts + body).hexdigest()


@pytest.mark.parametrize(
    "field",
    [
        lambda n: {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "number", "minimum": n}}}}}]},
        lambda n: {"chat_template_kwargs": {"budget": n}},
        lambda n: {"messages": [{"role": "user", "content": "hi", "weight": n}]},
    ],
    ids=["tools", "chat_template_kwargs", "messages"],
)  # fmt: skip
@pytest.mark.parametrize(("written", "other"), [(1.0, 1), (-0.0, 0), (0.0, -0.0)])
def test_numbers_the_template_writes_as_text_keep_their_spelling(
    field: Any, written: float, other: int | float
) -> None:
    """A chat template renders a tool's schema (``tojson``) and its arguments into the
    prompt: ``"minimum": 1.0`` and ``"minimum": 1`` are different prompts, so different
    answers, never one entry."""
    assert key(BASE | field(written)) != key(BASE | field(other))


def test_numbers_the_engine_reads_as_numbers_are_normalised_in_lists() -> None:
    """Token ids and stop token ids are numbers to vLLM, in lists (of lists) too."""
    prompt = {"prompt": [[1.0, 2.0], [3.0]], "stop_token_ids": [7.0]}
    assert key(BASE | prompt) == key(BASE | {"prompt": [[1, 2], [3]], "stop_token_ids": [7]})


def test_stream_options_without_a_stream_are_not_the_json_answers_key() -> None:
    """vLLM refuses ``stream_options`` on a request that does not stream (400): such a
    request must not be answered from the entry of the same body without them."""
    options = {"stream_options": {"include_usage": True}}
    assert answer_form(False, BASE | options) != answer_form(False, BASE)
    assert answer_form(False, BASE | {"stream_options": None}) == "json"
    assert answer_form(True, BASE | options) == answer_form(True, BASE) == "sse"
