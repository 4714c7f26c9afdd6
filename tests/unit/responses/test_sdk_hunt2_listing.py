"""SDK hunt, round 2: every input item the listing shows validates as the official
SDK's ``ResponseItem``, whatever optional fields the client's input left out (a
``status``, an ``output_text`` part's ``annotations``, an ``input_image`` part's
``detail``); the record itself keeps the items as the engine got them."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest
from openai.types.responses import ResponseItem

from gateway.responses.listing import input_items_page, listed
from gateway.responses.store import StoredResponse

AS_SDK: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseItem)

CLIENT_ITEMS: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    {"type": "custom_tool_call", "call_id": "c2", "name": "grep", "input": "x"},
    {"type": "custom_tool_call_output", "call_id": "c2", "output": "y"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]},
    {"role": "user", "content": [{"type": "input_image", "image_url": "https://a.example/b.png"}]},
    {"type": "reasoning", "summary": []},
]


@pytest.mark.parametrize("item", CLIENT_ITEMS, ids=lambda item: str(item.get("type", "easy")))
def test_each_listed_item_is_an_sdk_response_item(item: dict[str, Any]) -> None:
    AS_SDK.validate_python(listed("item_1", item))


def test_the_record_keeps_the_items_as_the_engine_got_them() -> None:
    items = copy.deepcopy(CLIENT_ITEMS)
    ids = [f"item_{n}" for n in range(len(items))]
    record = StoredResponse("resp_1", "alice", {"id": "resp_1", "output": []}, items, ids)
    page = input_items_page(record, {"order": "asc"})
    assert [item["status"] for item in page["data"][:6]] == ["completed"] * 6
    assert record.input_items == CLIENT_ITEMS


def test_a_status_given_is_kept_and_a_null_one_filled_in() -> None:
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    assert listed("i", {**call, "status": "incomplete"})["status"] == "incomplete"
    assert listed("i", {**call, "status": None})["status"] == "completed"


def test_odd_types_and_parts_are_listed_as_they_are() -> None:
    odd: dict[str, Any] = {"type": ["function_call"], "content": [3, {"type": ["x"]}]}
    shown = listed("i", odd)
    assert "status" not in shown
    assert listed("i", {"type": "message", "role": "user", "content": [3]})["content"] == [3]
