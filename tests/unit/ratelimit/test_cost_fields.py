"""What a request's prompt costs a ``tpm`` key beyond its messages' text: ``tools``,
assistant ``tool_calls``, vLLM's ``documents``, image and audio parts, ``prompt_embeds``,
and the Responses API's ``tools`` and non-text parts.

Each of these reaches the model's prompt (the chat template renders tools, tool calls
and documents; an image or audio part becomes tokens of its own), so a key with a tiny
``tpm`` could send a huge prompt through any of them while reserving a handful of
tokens, and get refused only when the same text sat in ``content``.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from gateway.ratelimit.cost import (
    EMBEDS_CHARS_PER_TOKEN,
    MEDIA_CHARS_PER_TOKEN,
    MEDIA_PART_TOKENS,
    Cost,
    request_cost,
)
from gateway.responses.conversation import conversation, read_create
from gateway.responses.pricing import cost_body

DESCRIPTION = "Looks a thing up. " * 600  # 10,800 characters: about 2,700 tokens
USER = {"role": "user", "content": "hi"}


def cost(body: dict[str, Any]) -> Cost:
    return request_cost(body, 16)


def tool(description: str = DESCRIPTION, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": "lookup", "description": description}
    function["parameters"] = parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def test_tools_count_like_the_same_text_in_content() -> None:
    plain = cost({"messages": [USER]}).prompt
    in_content = cost({"messages": [USER, {"role": "user", "content": DESCRIPTION}]}).prompt
    in_tools = cost({"messages": [USER], "tools": [tool()]}).prompt
    assert in_tools - plain >= len(DESCRIPTION) // 4
    assert in_tools >= in_content - 4  # the JSON around it, not a message's framing
    assert in_tools == -(-(16 + 2 + len(orjson.dumps([tool()]))) // 4)


def test_a_tools_parameter_schema_counts() -> None:
    schema = {
        "type": "object",
        "properties": {
            f"field_{i}": {"type": "string", "description": "x" * 100} for i in range(50)
        },
    }
    small = cost({"messages": [USER], "tools": [tool("d")]}).prompt
    large = cost({"messages": [USER], "tools": [tool("d", schema)]}).prompt
    assert large - small >= 50 * 100 // 4


def test_a_tiny_tpm_reservation_sees_the_whole_tools_prompt() -> None:
    body = {"messages": [USER], "tools": [tool()], "max_tokens": 10}
    assert cost(body).most > 2_700  # the bug hunter's request reserved 14 to 23


def test_assistant_tool_call_arguments_count() -> None:
    arguments = orjson.dumps({"query": "y" * 8_000}).decode()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    without = {"role": "assistant", "content": None}
    history = [USER, without | {"tool_calls": [call]}, {"role": "tool", "content": "ok"}]
    assert (
        cost({"messages": history}).prompt
        - cost({"messages": [USER, without, {"role": "tool", "content": "ok"}]}).prompt
        >= len(arguments) // 4
    )


def test_vllm_documents_count() -> None:
    documents = [{"title": f"doc {i}", "text": "z" * 4_000} for i in range(3)]
    added = (
        cost({"messages": [USER], "documents": documents}).prompt
        - cost({"messages": [USER]}).prompt
    )
    assert added >= 3 * 4_000 // 4


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_an_image_part_costs_a_flat_estimate_plus_its_inline_payload() -> None:
    payload = base64.b64encode(b"\x89PNG" + bytes(30_000)).decode()
    data_url = f"data:image/png;base64,{payload}"
    text = {"type": "text", "text": "what is this?"}
    base = cost({"messages": [{"role": "user", "content": [text]}]}).prompt
    remote = cost(
        {"messages": [{"role": "user", "content": [text, image_part("https://x.test/a.png")]}]}
    ).prompt
    inline = cost({"messages": [{"role": "user", "content": [text, image_part(data_url)]}]}).prompt
    assert MEDIA_PART_TOKENS <= remote - base < MEDIA_PART_TOKENS + 20
    assert MEDIA_PART_TOKENS + len(payload) // MEDIA_CHARS_PER_TOKEN <= inline - base
    assert inline - base < MEDIA_PART_TOKENS + len(payload) // 4  # not priced as text
    two = [text, image_part("https://x.test/a.png"), image_part("https://x.test/b.png")]
    assert cost({"messages": [{"role": "user", "content": two}]}).prompt - base >= (
        2 * MEDIA_PART_TOKENS
    )


def test_an_input_audio_part_counts_its_data() -> None:
    data = base64.b64encode(bytes(48_000)).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    assert cost(body).prompt >= MEDIA_PART_TOKENS + len(data) // MEDIA_CHARS_PER_TOKEN


def test_prompt_embeds_count_and_each_is_a_choice() -> None:
    one = base64.b64encode(bytes(4096 * 2 * 10)).decode()  # 10 rows of a 4096-wide bf16
    single = cost({"prompt_embeds": one, "max_tokens": 5})
    assert single.prompt >= 10  # never fewer tokens than the rows it can hold
    assert single.prompt == -(-len(one) // EMBEDS_CHARS_PER_TOKEN)
    assert single.choices == 1
    batch = cost({"prompt_embeds": [one, one, one], "n": 2})
    assert batch.prompt == 3 * single.prompt
    assert batch.choices == 6
    both = cost({"prompt": "abcd" * 4, "prompt_embeds": one})
    assert both.prompt == 4 + single.prompt and both.choices == 2


def test_the_encoder_runs_only_for_the_fields_that_need_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    real = orjson.dumps

    def dumps(value: object) -> bytes:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(orjson, "dumps", dumps)
    chat = {"messages": [{"role": "system", "content": "be brief"}, USER], "max_tokens": 9}
    assert cost(chat) == Cost((8 + 2 + 32 + 3) // 4, 9, 1)  # as it always was
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 84}]}]}
    assert cost(parts).prompt == 25
    assert calls == []  # plain bodies are never encoded
    cost({"messages": [USER], "tools": [tool("d")]})
    assert len(calls) == 1


def test_fields_of_the_wrong_type_count_as_absent_and_never_raise() -> None:
    plain = cost({"messages": [USER]})
    junks: tuple[Any, ...] = (3, "tools", {"a": 1}, [], None)
    for junk in junks:
        assert cost({"messages": [USER], "tools": junk, "documents": junk}) == plain
    odd = cost({"messages": [USER], "tools": [{1, 2}]})  # not JSON: by its str, no raise
    assert odd.prompt > plain.prompt
    with_calls = {"role": "assistant", "content": "x", "tool_calls": "nope"}
    assert cost({"messages": [with_calls]}) == cost({"messages": [{"content": "x"}]})
    assert cost({"prompt_embeds": 7}) == cost({}) == Cost(0, 16, 1)


# -- the Responses API --------------------------------------------------------------


def responses_cost(body: dict[str, Any]) -> Cost:
    request = read_create({"model": "m", **body})
    items, _ = conversation(None, request)
    return cost(cost_body(request, items))


def test_responses_tools_count() -> None:
    function = {"type": "function", "name": "lookup", "description": DESCRIPTION}
    plain = responses_cost({"input": "hi"}).prompt
    assert responses_cost({"input": "hi", "tools": [function]}).prompt - plain >= (
        len(DESCRIPTION) // 4
    )


def test_responses_image_and_file_parts_count() -> None:
    payload = base64.b64encode(bytes(20_000)).decode()
    text = {"type": "input_text", "text": "what is this?"}
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{payload}"}
    plain = responses_cost({"input": [{"role": "user", "content": [text]}]}).prompt
    with_image = responses_cost({"input": [{"role": "user", "content": [text, image]}]}).prompt
    assert with_image - plain >= MEDIA_PART_TOKENS + len(payload) // MEDIA_CHARS_PER_TOKEN
    output = [{"type": "input_text", "text": "w" * 4_000}]
    returned = {"type": "function_call_output", "call_id": "c", "output": output}
    assert responses_cost({"input": [returned]}).prompt >= 4_000 // 4


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "name", "tool_call_id"])
def test_a_messages_other_fields_count_like_content(field: str) -> None:
    """vLLM hands a message's other fields to the chat template (an assistant's
    ``reasoning`` is rendered by reasoning models' templates): priced as its content."""
    plain = cost({"messages": [USER, {"role": "assistant", "content": ""}]}).prompt
    extra = {"role": "assistant", "content": "", field: DESCRIPTION}
    assert cost({"messages": [USER, extra]}).prompt - plain == len(DESCRIPTION) // 4


def test_chat_template_kwargs_count_by_their_json() -> None:
    kwargs = {"tools": [tool()], "enable_thinking": False}
    plain = cost({"messages": [USER]}).prompt
    priced = cost({"messages": [USER], "chat_template_kwargs": kwargs}).prompt
    assert priced - plain >= len(orjson.dumps(kwargs)) // 4


def test_a_role_and_content_message_costs_what_it_did() -> None:
    assert cost({"messages": [USER]}).prompt == -(-(16 + len("hi")) // 4)
