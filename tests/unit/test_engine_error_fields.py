"""An engine error's ``param`` and ``code`` (and, in a Responses failure, ``type``) are
cleaned and bounded as its message is: an engine fills them as it likes, and they were
relayed as they came (a path, an address, an engine key, a megabyte of text) in a JSON
4xx or 5xx body, a stream's error event and a Responses failure event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import openai_error
from gateway.errors.engine_internals import MAX_FIELD, SECRET_MARK, engine_field
from gateway.pipeline.response_failures import told_failures, told_response
from gateway.upstream.relay import mapped_error_events

KEY = "sk-engine-key-123"
LEAKY = f"messages /opt/vllm/secret/x.py 10.1.2.3:8000 {KEY}"
LEAKS = ("/opt/", "10.1.2.3", KEY)


def _assert_clean(value: Any) -> None:
    assert value is None or (isinstance(value, str) and len(value) <= MAX_FIELD), value
    for leak in LEAKS:
        assert leak not in (value or ""), value


def _relayed(status: int, param: Any, code: Any) -> dict[str, Any]:
    error = {"message": "bad", "type": "BadRequestError", "param": param, "code": code}
    raw = orjson.dumps({"error": error})
    relayed: dict[str, Any] = orjson.loads(openai_error(status, raw, secrets=(KEY,)))["error"]
    return relayed


@pytest.mark.parametrize("status", [400, 422, 500])
def test_an_engines_param_and_code_are_cleaned(status: int) -> None:
    error = _relayed(status, LEAKY, LEAKY)
    for field in ("param", "code"):
        _assert_clean(error[field])
        assert error[field].startswith("messages <path> <engine> " + SECRET_MARK)


@pytest.mark.parametrize("status", [400, 503])
def test_an_engines_huge_param_and_code_are_bounded(status: int) -> None:
    huge = "word " * 200_000  # a megabyte
    error = _relayed(status, huge, "x" * 100_000)
    assert len(error["param"]) <= MAX_FIELD
    assert error["code"] is None  # one word past the bound: nothing of it is left


def test_a_plain_param_and_code_are_relayed_as_they_are() -> None:
    error = _relayed(400, "temperature", "invalid_value")
    assert (error["param"], error["code"]) == ("temperature", "invalid_value")
    assert engine_field(7) is None


def test_a_streamed_engine_error_event_is_cleaned() -> None:
    error = {"message": "bad", "type": "BadRequestError", "param": LEAKY, "code": LEAKY}
    batch = b"data: " + orjson.dumps({"error": error}) + b"\n\n"
    mapped, _ = mapped_error_events(batch, "messages", (KEY,))
    relayed = orjson.loads(mapped.split(b"data: ", 1)[1])["error"]
    for field in ("param", "code"):
        _assert_clean(relayed[field])


def test_a_responses_error_event_is_cleaned() -> None:
    event = {"type": "error", "code": LEAKY, "message": "bad", "param": LEAKY}
    told = told_failures(b"event: error\ndata: " + orjson.dumps(event) + b"\n\n", (KEY,))
    relayed = orjson.loads(told.split(b"data: ", 1)[1])
    assert relayed["type"] == "error"
    _assert_clean(relayed["code"])
    _assert_clean(relayed["param"])


def test_a_failed_responses_error_is_cleaned() -> None:
    response: dict[str, Any] = {
        "status": "failed",
        "error": {"code": LEAKY, "message": "bad", "type": "x" * 5000, "param": LEAKY},
    }
    assert told_response(response, (KEY,))
    for field in ("code", "param", "type"):
        _assert_clean(response["error"][field])
