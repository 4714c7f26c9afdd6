"""Hunt: every item's text the engine renders is priced, and a hostile ``after`` is
echoed shortened.

A ``function_call`` item becomes a chat tool call (``name``, ``call_id``,
``arguments``) that the chat template renders; only its ``arguments`` were priced, so
a 200,000-character ``name`` (~50,000 prompt tokens) was reserved as ~10 tokens and
admitted on a 20,000-tpm key."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequestError
from gateway.ratelimit.cost import request_cost
from gateway.responses.conversation import (
    conversation,
    read_create,
)
from gateway.responses.listing import input_items_page
from gateway.responses.pricing import check_text_size, cost_body
from gateway.responses.store import StoredResponse

BIG = 200_000


def _priced_prompt(items: list[Any]) -> int:
    request = read_create({"model": "m", "input": items})
    body = cost_body(request, conversation(None, request)[0])
    return request_cost(body, 16).prompt


@pytest.mark.parametrize(
    "item",
    [
        {"type": "function_call", "call_id": "c1", "name": "f" * BIG, "arguments": "{}"},
        {"type": "function_call", "call_id": "c" * BIG, "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c" * BIG, "output": "ok"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "f", "input": "i" * BIG},
    ],
)
def test_a_calls_rendered_fields_are_priced(item: dict[str, Any]) -> None:
    assert _priced_prompt([item]) >= BIG // 4


def test_a_huge_name_counts_against_max_prompt_chars() -> None:
    request = read_create(
        {"model": "m", "input": [{"type": "function_call", "name": "f" * BIG, "call_id": "c"}]}
    )
    with pytest.raises(InvalidRequestError):
        check_text_size(cost_body(request, request.new_items), BIG - 1)


def test_a_messages_item_id_and_role_are_not_text() -> None:
    item = {"type": "message", "id": "m" * BIG, "role": "user", "content": "hi"}
    assert _priced_prompt([item]) < 100


def test_a_long_after_is_echoed_shortened() -> None:
    items = [{"type": "message", "role": "user", "content": "Hello"}]
    record = StoredResponse("resp_1", "alice", {"id": "resp_1", "output": []}, items, ["msg_u"])
    with pytest.raises(InvalidRequestError) as error:
        input_items_page(record, {"after": "z" * 5000})
    assert len(error.value.message) < 200
    assert error.value.param == "after"
