"""vLLM's error answers in OpenAI's shape (:func:`gateway.errors.openai_error`)."""

from __future__ import annotations

import json
import time

import orjson
import pytest

from gateway.errors import UpstreamStatusError, openai_error
from gateway.errors.engine_internals import engine_failure_message
from gateway.errors.engine_text import hide_names, relayed_retry_after


def vllm(message: str, status: int = 400, kind: str = "BadRequestError") -> bytes:
    """An error body exactly as vLLM 0.32 writes it."""
    error = {"message": message, "type": kind, "param": "input_tokens", "code": status}
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 2048 tokens. However, your prompt contains "
        "4100 input tokens, which exceeds this limit even without any output tokens.",
        "Input length (5000) exceeds model's maximum context length (2048).",
        "The decoder prompt (length 2049) is longer than the maximum model length of 2048. "
        "Make sure that `max_model_len` is no smaller than the number of text tokens.",
        "The decoder prompt (length 2048) plus the number of requested output tokens (at least "
        "1) is longer than the maximum model length of 2048.",
    ],
)
@pytest.mark.parametrize("param", ["messages", "prompt"])
def test_every_context_length_message_is_context_length_exceeded(message: str, param: str) -> None:
    error = orjson.loads(openai_error(400, vllm(message), param))["error"]
    assert error == {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": "context_length_exceeded",
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "invalid_request_error"), (422, "invalid_request_error"), (429, "rate_limit_error"),
     (500, "server_error"), (503, "server_error")],
)  # fmt: skip
def test_the_type_follows_the_status_and_a_numeric_code_is_dropped(status: int, kind: str) -> None:
    error = orjson.loads(openai_error(status, vllm("nope", status)))["error"]
    shown = "nope" if status < 500 else engine_failure_message(status)
    assert error["type"] == kind and error["code"] is None and error["message"] == shown


def test_an_unknown_model_is_model_not_found() -> None:
    body = vllm("The model `x` does not exist.", 404, "NotFoundError")
    error = orjson.loads(openai_error(404, body))["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize(
    "raw",
    [b"upstream connect error to http://10.0.0.7:8000/v1/chat", b'{"detail": "see http://e:1/x"}'],
)
def test_text_and_detail_bodies_keep_their_message_without_engine_urls(raw: bytes) -> None:
    error = orjson.loads(openai_error(404, raw))["error"]
    assert "10.0.0.7" not in error["message"] and "http://" not in error["message"]
    assert "<engine>" in error["message"] and error["type"] == "invalid_request_error"


def test_garbage_and_empty_bodies_still_give_an_openai_error() -> None:
    for raw in (b"", b"{", b'{"error": 5}', b"[1]"):
        error = orjson.loads(openai_error(400, raw))["error"]
        assert error["type"] == "invalid_request_error" and error["message"]


def test_upstream_status_error_uses_the_routes_prompt_param() -> None:
    exc = UpstreamStatusError(
        400,
        vllm("Input length (9) exceeds model's maximum context length (8)."),
        "application/json",
    )
    exc.prompt_param = "prompt"
    assert orjson.loads(exc.body())["error"]["param"] == "prompt"


def test_older_vllms_error_object_is_read_as_an_error() -> None:
    raw = orjson.dumps(
        {"object": "error", "message": "bad thing", "type": "BadRequestError",
         "param": "temperature", "code": 400}
    )  # fmt: skip
    error = orjson.loads(openai_error(400, raw))["error"]
    assert (error["message"], error["param"], error["code"]) == ("bad thing", "temperature", None)


def test_fastapis_validation_errors_become_one_line() -> None:
    raw = orjson.dumps(
        {"detail": [{"loc": ["body", "messages", 0, "role"], "msg": "Field required"},
                    {"loc": ["body", "model"], "msg": "Field required"}]}
    )  # fmt: skip
    error = orjson.loads(openai_error(422, raw))["error"]
    assert error["message"] == "messages.0.role: Field required (and 1 more)"


def test_an_html_page_reads_as_its_title_in_linear_time() -> None:
    """The title is searched for in an error page of up to 256 MB (what the engine
    clients read), on the event loop: ``<title[^>]*>`` scanned to the body's end from
    every ``<title`` without a ``>`` (0.76 s at 64 KB, 12 s at 256 KB, hours at the
    limit). Now a tag's attributes end at the next ``<`` too: linear (review)."""
    page = b"<html><head><title>413 Request\n Entity Too Large</title></head></html>"
    message = orjson.loads(openai_error(413, page))["error"]["message"]
    assert message == "413 Request Entity Too Large"
    hostile = b"<title" * (256 * 1024 // 6)
    started = time.perf_counter()
    error = orjson.loads(openai_error(413, hostile))["error"]
    assert time.perf_counter() - started < 1.0
    assert error["message"] == "engine answered HTTP 413"


def _message(raw: str, renamed: tuple[str, ...]) -> str:
    body = orjson.dumps({"error": {"message": raw, "code": 400}})
    message: str = orjson.loads(openai_error(400, body, renamed=renamed))["error"]["message"]
    return message


def test_every_whole_occurrence_of_an_engine_name_is_the_clients() -> None:
    names = ("llama", "/models/llama-3b", "public")
    raw = "`llama` 'llama' \"llama\" llama: (llama) /models/llama-3b/x llama. llama2 xllama"
    assert _message(raw, names) == (
        "`public` 'public' \"public\" public: (public) public/x public. llama2 xllama"
    )


def test_a_replacement_is_never_searched_again() -> None:
    """The client's name may contain a served one (``llama`` shown as ``llama-chat``):
    each place of the engine's message is replaced once, not ``llama-chat-chat``."""
    assert _message("model llama and llama", ("llama", "llama-chat")) == (
        "model llama-chat and llama-chat"
    )
    assert _message("`llama-chat`", ("llama", "llama-chat")) == "`llama-chat`"


def test_hiding_names_is_linear_and_never_shows_part_of_a_name() -> None:
    """A huge hostile message costs no more than its first ``limit`` characters; a
    name cut by the limit never shows in part, even when shorter replacements pull
    the text after it forward."""
    # Read only up to the limit: a scan of the whole text per name (or quadratic) would
    # not finish these in the test's time.
    assert hide_names("a" * 50_000_000, ("a", "aa"), "b", 4000) == "a" * 4000
    assert hide_names("x a " * 20_000_000, ("a",), "bb", 4000).startswith("x bb x bb ")
    internal = "/very/long/internal/path"
    message = (internal + " ") * 200 + "tail"
    shown = hide_names(message, (internal,), "p", 100)
    assert "/very" not in shown and "internal" not in shown
    assert shown == "p " * 4  # the fifth begins at the limit: never shown, even in part
    assert hide_names("abc", (), "p", 2) == "ab"


@pytest.mark.parametrize(
    ("value", "relayed"),
    [
        (b"7", {"Retry-After": "7"}),
        (" 0 ", {"Retry-After": "0"}),
        ("007", {"Retry-After": "7"}),
        ("3600", {"Retry-After": "3600"}),
        ("3601", {}),
        ("99999999999999999999", {}),
        ("Wed, 21 Oct 2026 07:28:00 GMT", {}),
        ("1.5", {}),
        ("", {}),
        ("\u0661", {}),  # an Arabic-Indic digit: isdigit, not ASCII
        ("5\r\nx-evil: 1", {}),
    ],
)
def test_an_engines_retry_after_is_relayed_as_delta_seconds_only(
    value: bytes | str, relayed: dict[str, str]
) -> None:
    assert relayed_retry_after(value) == relayed
    error = UpstreamStatusError(503, b"{}", "application/json", value)
    assert error.headers == relayed
