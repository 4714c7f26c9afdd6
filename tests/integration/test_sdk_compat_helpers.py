"""The OpenAI SDK's own helpers through a real gateway to a real stub engine: what an
application built on them (not on ``create``) relies on. ``chat.completions.stream``
and ``.parse`` assemble the events into parsed tool calls; ``responses.stream``
checks the event sequence and builds the final response; ``with_raw_response`` and
``_request_id`` read the gateway's headers."""

from __future__ import annotations

import asyncio

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Find the gateway."}]


class Search(pydantic.BaseModel):
    q: str


TOOLS = [openai.pydantic_function_tool(Search, name="search")]


def test_the_chat_stream_helper_parses_every_choices_tool_call_and_the_usage(
    gateway: Gateway,
) -> None:
    with gateway.client().chat.completions.stream(
        model=STUB_MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        n=2,
        max_tokens=40,
        stream_options={"include_usage": True},
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    assert [choice.index for choice in final.choices] == [0, 1]
    for choice in final.choices:
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "search"
        assert isinstance(call.function.parsed_arguments, Search)
        assert call.function.parsed_arguments.q
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_chat_parse_gives_the_tool_calls_arguments_as_the_model(gateway: Gateway) -> None:
    parsed = gateway.client().chat.completions.parse(
        model=STUB_MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=40
    )
    (call,) = parsed.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Search)
    assert parsed._request_id is not None and parsed._request_id.startswith("req_")


def test_the_responses_stream_helper_sees_one_ordered_sequence_and_a_retrievable_final(
    gateway: Gateway,
) -> None:
    client = gateway.client()
    with client.responses.stream(model=STUB_MODEL, input="hello", max_output_tokens=4) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.status == "completed" and final.output_text == deltas != ""
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text
    follow_up = client.responses.create(
        model=STUB_MODEL, input="more", previous_response_id=final.id, max_output_tokens=2
    )
    assert follow_up.previous_response_id == final.id


async def test_concurrent_async_helpers_each_get_their_own_answer(gateway: Gateway) -> None:
    client = gateway.async_client()

    async def chat(i: int) -> str | None:
        async with client.chat.completions.stream(
            model=STUB_MODEL,
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=40,  # the stub's answer ends first: at the limit the helper raises
            extra_headers={"x-request-id": f"sdk-{i}"},
        ) as stream:
            final = await stream.get_final_completion()
            assert stream._response.headers["x-request-id"] == f"sdk-{i}"
        return final.choices[0].message.content

    async def respond(i: int) -> str:
        async with client.responses.stream(
            model=STUB_MODEL, input=f"input {i}", max_output_tokens=3
        ) as stream:
            final = await stream.get_final_response()
        return (await client.responses.retrieve(final.id)).output_text

    answers = await asyncio.gather(*(chat(i) for i in range(12)), *(respond(i) for i in range(12)))
    assert all(answers)
    await client.close()


def test_an_errors_request_id_and_fields_reach_the_sdk_exception(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        gateway.client().chat.completions.with_raw_response.create(
            model="no-such-model", messages=MESSAGES, extra_headers={"x-request-id": "sdk-error"}
        )
    error = raised.value
    assert error.request_id == "sdk-error"
    assert (error.code, error.param, error.type) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )
