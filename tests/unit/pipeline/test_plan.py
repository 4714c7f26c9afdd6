"""Request planning: the client's model name put back into engine answers
(``upstream_model``), and the headers the completion routes read."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.types import Scope

from gateway.http.context import completion_headers
from gateway.pipeline.plan import ModelRename


def test_rename_rewrites_the_model_field_in_compact_and_spaced_json() -> None:
    rename = ModelRename("org/served-1", "alias")
    compact = b'{"id":"x","model":"org/served-1","choices":[]}'
    spaced = b'{"id": "x", "model": "org/served-1", "choices": []}'
    assert orjson.loads(rename.inspect(compact))["model"] == "alias"
    assert orjson.loads(rename.inspect(spaced))["model"] == "alias"


def test_rename_rewrites_every_event_of_a_batch() -> None:
    rename = ModelRename("served", "alias")
    event = b'data: {"model":"served","choices":[{"delta":{"content":"hi"}}]}\n\n'
    renamed = rename.inspect(event * 3 + b"data: [DONE]\n\n")
    assert renamed.count(b'"model":"alias"') == 3
    assert b"served" not in renamed
    assert renamed.endswith(b"data: [DONE]\n\n")


def test_rename_leaves_generated_text_and_other_models_alone() -> None:
    rename = ModelRename("served", "alias")
    # Generated text that spells the pattern is JSON-escaped, so it never matches.
    text = orjson.dumps({"model": "other", "content": '"model":"served"'})
    assert rename.inspect(text) == text
    assert orjson.loads(rename.inspect(text))["content"] == '"model":"served"'


def test_rename_handles_names_that_need_json_escaping() -> None:
    rename = ModelRename('we"ird', "alias")
    body = orjson.dumps({"model": 'we"ird'})
    assert orjson.loads(rename.inspect(body))["model"] == "alias"


def test_completion_headers_are_read_in_one_pass_first_wins() -> None:
    scope: Scope = {
        "type": "http",
        "headers": [
            (b"host", b"x"),
            (b"authorization", b"Bearer sk-1"),
            (b"cache-control", b"no-cache"),
            (b"authorization", b"Bearer sk-2"),
            (b"content-length", b"42"),
        ],
    }
    headers = completion_headers(scope["headers"])
    assert headers.authorization == "Bearer sk-1"  # the first of repeated headers, as Starlette
    assert headers.cache_control == "no-cache"
    assert headers.content_length == "42"
    assert headers.session_id is None
    assert headers.authorization == Request(scope).headers.get("authorization")
