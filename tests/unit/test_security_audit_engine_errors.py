"""Security audit: what of an engine's error message reaches a client.

Before, a 5xx's message was relayed as the engine wrote it (only URLs removed): a
Python traceback, the engine host's file paths and its peers' addresses went to
whichever tenant's request failed. Now a 5xx's message is replaced whole and a 4xx's
keeps its text less what is internal (:mod:`gateway.errors.engine_internals`).
"""

from __future__ import annotations

import time

import orjson
import pytest

from gateway.errors import openai_error
from gateway.errors.engine_internals import engine_failure_message, without_internals

INTERNAL = (
    "Internal error in /opt/vllm/engine/core.py at 10.1.2.3:8001 (peer vllm-1.svc.local:8000, "
    "[fd00::7]:9000, redis://:pw@10.0.0.9:6379/0)\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/vllm/x.py", line 3, in run\n'
    "ValueError: boom"
)
LEAKS = ("/opt/", "/usr/lib", "10.1.2.3", "vllm-1", "fd00", "pw@", "10.0.0.9", "Traceback", "File")


def _error(status: int, message: str) -> dict[str, object]:
    raw = orjson.dumps({"error": {"message": message, "type": "X", "param": None, "code": 500}})
    error: dict[str, object] = orjson.loads(openai_error(status, raw))["error"]
    return error


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_message_is_never_the_engines(status: int) -> None:
    error = _error(status, INTERNAL)
    assert error["message"] == engine_failure_message(status)
    assert error["type"] == "server_error"


@pytest.mark.parametrize("raw", [INTERNAL.encode(), b"<html><title>/srv/x/y 10.2.3.4</title>"])
def test_a_5xx_text_body_is_never_the_engines_either(raw: bytes) -> None:
    message = orjson.loads(openai_error(502, raw))["error"]["message"]
    assert message == engine_failure_message(502)


def test_a_4xx_message_keeps_its_text_without_internals() -> None:
    message = str(_error(400, INTERNAL)["message"])
    assert message.startswith("Internal error in <path> at <engine> (peer <engine>, <engine>")
    assert not any(leak in message for leak in LEAKS), message


def test_what_a_client_needs_stays() -> None:
    kept = (
        "This model's maximum context length is 2048 tokens. However, you requested 4100 "
        "tokens (1.5 per word). Use meta-llama/Llama-3-8B or org/model, ratio 3:2."
    )
    assert _error(400, kept)["message"] == kept


def test_a_traceback_alone_leaves_the_status_as_the_message() -> None:
    raw = b"Traceback (most recent call last):\n  File \"/a/b.py\", line 1\nKeyError: 'k'"
    assert orjson.loads(openai_error(400, raw))["error"]["message"] == "engine answered HTTP 400"


def test_a_word_cut_at_the_limit_goes_whole() -> None:
    """A path or address the length limit cuts short would no longer be recognised."""
    message = "x " * 10 + "/opt/internal/secret/dir"
    assert without_internals(message, 30) == ("x " * 10).rstrip()
    assert without_internals("a" * 50, 30) == ""


@pytest.mark.parametrize(
    "hostile",
    ["a-" * 20_000, "/a" * 20_000, "[" + "a" * 40_000, "1." * 20_000, "x.y" * 13_000 + ":"],
)
def test_hostile_text_is_read_in_linear_time(hostile: str) -> None:
    started = time.perf_counter()
    without_internals(hostile, len(hostile))
    assert time.perf_counter() - started < 0.5
