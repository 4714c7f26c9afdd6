"""SDK hunt, round 2: what the gateway itself writes on the Responses routes, checked
against the official SDK's own types (validated, not just constructed: the SDK
builds its objects without validation, so a missing required field only shows as a
``None`` where the type promises a value).

A function-call round trip lists its ``function_call`` and ``function_call_output``
input items with a ``status``, as OpenAI does and the SDK's listed item types require
(the gateway gave one only to string-content messages), and a message's parts with
the fields OpenAI lists even when the input left them out (an ``output_text`` part's
``annotations``, an ``input_image`` part's ``detail``).
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import ResponseInputItemParam, ResponseItem
from openai.types.responses.response_item_list import ResponseItemList

from tests.integration.conftest import STUB_MODEL, Gateway

CALL_ID = "call_weather_1"
ROUND_TRIP: list[ResponseInputItemParam] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "type": "function_call",
        "call_id": CALL_ID,
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    },
    {"type": "function_call_output", "call_id": CALL_ID, "output": "sunny"},
]


def test_a_function_call_round_trips_items_are_listed_as_the_sdk_types_them(
    gateway: Gateway,
) -> None:
    client = gateway.client()
    first = client.responses.create(model=STUB_MODEL, input=ROUND_TRIP, max_output_tokens=4)
    follow_up = client.responses.create(
        model=STUB_MODEL,
        input=[{"type": "function_call_output", "call_id": "call_2", "output": "rainy"}],
        previous_response_id=first.id,
        max_output_tokens=4,
    )
    raw = client.responses.input_items.with_raw_response.list(follow_up.id, order="asc")
    listed: dict[str, Any] = raw.http_response.json()
    ResponseItemList.model_validate(listed)  # raised: function_call.status missing
    kinds = [(item["type"], item.get("status")) for item in listed["data"]]
    assert kinds == [
        ("message", "completed"),
        ("function_call", "completed"),
        ("function_call_output", "completed"),
        ("message", "completed"),  # the first answer
        ("function_call_output", "completed"),
    ]
    page = raw.parse()
    assert [item.id for item in page.data] == [item["id"] for item in listed["data"]]


PARTS_LEFT_OUT: Any = [  # Any: the SDK's params now require them; other clients don't
    {"role": "assistant", "content": [{"type": "output_text", "text": "Earlier."}]},
    {
        "role": "user",
        "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}],
    },
    {"role": "user", "content": "And now?"},
]


def test_message_parts_are_listed_with_the_fields_openai_lists(gateway: Gateway) -> None:
    client = gateway.client()
    made = client.responses.create(
        model=STUB_MODEL,
        input=PARTS_LEFT_OUT,
        max_output_tokens=4,
    )
    raw = client.responses.input_items.with_raw_response.list(made.id, order="asc")
    listed: list[dict[str, Any]] = raw.http_response.json()["data"]
    as_sdk = pydantic.TypeAdapter(ResponseItem)
    for item in listed:
        as_sdk.validate_python(item)  # raised: annotations, then detail, missing
    assert listed[0]["content"] == [{"type": "output_text", "text": "Earlier.", "annotations": []}]
    assert listed[1]["content"][0]["detail"] == "auto"


def test_responses_operations_the_gateway_lacks_are_not_found(gateway: Gateway) -> None:
    """``input_tokens`` and ``compact`` matched ``/v1/responses/{id}`` and got 405 (the
    operation exists, the method is wrong); a 404 is what the SDK's NotFoundError says."""
    client = gateway.client()
    with pytest.raises(openai.NotFoundError) as counted:
        client.responses.input_tokens.count(model=STUB_MODEL, input="hello")
    assert "input_tokens" in counted.value.message and "not supported" in counted.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.compact(model=STUB_MODEL, input="hello")
    retrieved = httpx.get(f"{gateway.base_url}/responses/input_tokens")  # an id to look up
    assert retrieved.status_code == 404
