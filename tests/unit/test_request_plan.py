"""Putting the client's model name back into engine answers (``upstream_model``)."""

from __future__ import annotations

import orjson

from gateway.request_plan import ModelRename


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
