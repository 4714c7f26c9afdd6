"""The engines' keys in an engine's error text (:func:`without_secrets`): each written
``<engine-key>`` wherever it is, never a part of one left in view."""

from __future__ import annotations

import orjson

from gateway.errors import openai_error
from gateway.errors.engine_internals import SECRET_MARK, without_secrets
from gateway.pipeline.response_failures import told_failures
from gateway.upstream.relay import mapped_error_events

KEY = "sk-abc123"


def test_every_occurrence_of_each_key_is_hidden() -> None:
    message = f"{KEY}x got Bearer {KEY}; other zz-key"
    assert without_secrets(message, (KEY, "zz-key"), 4000) == (
        f"{SECRET_MARK}x got Bearer {SECRET_MARK}; other {SECRET_MARK}"
    )


def test_overlapping_keys_are_hidden_as_one() -> None:
    assert without_secrets("AAABCD!", ("AAAB", "ABCD"), 100) == f"{SECRET_MARK}!"


def test_a_key_across_the_limit_is_hidden_and_nothing_after_the_limit_shows() -> None:
    message = "a" * 8 + KEY + "tail"
    assert without_secrets(message, (KEY,), 10) == "a" * 8 + SECRET_MARK
    shifted = KEY + "b" * 8 + "sk-"  # the mark is longer; text past 10 never comes in
    assert without_secrets(shifted, (KEY,), 10) == SECRET_MARK + "b"
    assert without_secrets("plain", (), 3) == "pla"


def test_a_relayed_error_and_error_event_hide_the_keys() -> None:
    raw = orjson.dumps({"error": {"message": f"you sent Bearer {KEY}", "code": 400}})
    body = orjson.loads(openai_error(400, raw, secrets=(KEY,)))
    assert body["error"]["message"] == f"you sent Bearer {SECRET_MARK}"
    mapped, status = mapped_error_events(b"data: " + raw + b"\n\n", "messages", (KEY,))
    assert status == 400 and KEY.encode() not in mapped and SECRET_MARK.encode() in mapped


def test_a_responses_error_event_hides_the_keys() -> None:
    event = orjson.dumps({"type": "error", "code": "bad", "message": f"key {KEY}"})
    told = told_failures(b"data: " + event + b"\n\n", (KEY,))
    assert orjson.loads(told[6:])["message"] == f"key {SECRET_MARK}"
