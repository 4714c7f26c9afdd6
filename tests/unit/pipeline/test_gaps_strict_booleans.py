"""Bug hunt: ``"stream": "yes"`` (or ``"true"``, ``1``, ``"1"``) was read as true (a lax
pydantic bool), and so was ``stream_options.include_usage: "yes"``: the gateway streamed,
asked for usage and keyed its cache on what the OpenAI API refuses. The booleans the
gateway acts on are now JSON booleans only: anything else is a 400 naming the field,
before anything is reserved, looked up or sent."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.pipeline.parsing import normalized, validate
from gateway.pipeline.results import Answer, EventStream
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import STREAM_EVENTS, chat_body, completion, drain, world

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TEXT: dict[str, Any] = {"model": "m", "prompt": "hi"}
LAX = ["yes", "true", "True", "false", "no", 1, 0, "1", "0", 1.0, "on", [], {}]


@pytest.mark.parametrize("value", LAX)
@pytest.mark.parametrize("schema", [ChatCompletionRequest, CompletionRequest])
def test_a_stream_that_is_not_a_json_boolean_is_refused(
    schema: type[ChatCompletionRequest] | type[CompletionRequest], value: Any
) -> None:
    body = (CHAT if schema is ChatCompletionRequest else TEXT) | {"stream": value}
    with pytest.raises(InvalidRequestError) as caught:
        validate(schema, body)
    error = caught.value
    assert error.param == "stream" and error.status == 400
    assert error.message == "stream: must be a JSON boolean (true or false)"
    assert orjson.loads(error.body()) == {
        "error": {
            "message": "stream: must be a JSON boolean (true or false)",
            "type": "invalid_request_error",
            "param": "stream",
            "code": "invalid_request",
        }
    }


@pytest.mark.parametrize("name", ["include_usage", "continuous_usage_stats"])
@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_stream_options_booleans_are_strict(name: str, value: Any) -> None:
    body = CHAT | {"stream": True, "stream_options": {name: value}}
    with pytest.raises(InvalidRequestError) as caught:
        validate(ChatCompletionRequest, body)
    assert caught.value.param == f"stream_options.{name}"


@pytest.mark.parametrize("value", [True, False, None])
def test_json_booleans_and_null_are_accepted_as_written(value: bool | None) -> None:
    body = CHAT | {"stream": value, "stream_options": {"include_usage": value}}
    request = validate(ChatCompletionRequest, body)
    assert request.stream is value
    assert normalized(body, request) is body  # nothing to normalise: the same dict


async def test_a_lax_stream_reaches_nothing() -> None:
    """The whole pipeline: the 400 comes before admission, the cache and the engines."""
    w = world(lambda _: Scripted(body=completion(), events=STREAM_EVENTS))
    for value in ("yes", 1, "true"):
        with pytest.raises(InvalidRequestError) as caught:
            await w.ask(chat_body(stream=value))  # type: ignore[arg-type]
        assert caught.value.param == "stream"
    with pytest.raises(InvalidRequestError):
        await w.ask(chat_body(stream=True, stream_options={"include_usage": "yes"}))
    assert w.upstream.requests == []
    w.assert_nothing_held()
    answered = await w.ask(chat_body())  # the key's one concurrency slot is free
    assert isinstance(answered, Answer)
    streamed = await w.ask(chat_body(stream=True, temperature=1))
    assert isinstance(streamed, EventStream)
    await drain(streamed)
    sent: list[FakeRequest] = w.upstream.requests
    assert [r.stream for r in sent] == [False, True]
    w.assert_nothing_held()
