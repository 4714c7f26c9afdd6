"""Checking a create body, expanding a follow-up, pricing it and listing input items."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.responses.conversation import (
    PreviousResponseNotFoundError,
    check_found,
    conversation,
    engine_payload,
    read_create,
)
from gateway.responses.listing import input_items_page
from gateway.responses.pricing import cost_body
from gateway.responses.store import StoredResponse

ANSWER = {"id": "msg_a", "type": "message", "role": "assistant", "content": [{"text": "Hi!"}]}


def _stored(owner: str = "alice") -> StoredResponse:
    items = [{"type": "message", "role": "user", "content": "Hello"}]
    return StoredResponse("resp_1", owner, {"id": "resp_1", "output": [ANSWER]}, items, ["msg_u"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": ["m"], "input": "x"}, "model"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": ["text"]}, "input"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "x", "store": 1}, "store"),
        ({"model": "m", "input": "x", "background": True}, "background"),
        ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "x", "conversation": {"id": "conv_1"}}, "conversation"),
        ({"model": "m", "input": "x", "previous_response_id": 7}, "previous_response_id"),
        ({"model": "m", "input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "instructions": {}}, "instructions"),
        ({"model": "m", "input": "x", "metadata": ["a"]}, "metadata"),
        ({"model": "m", "input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"model": "m", "input": "x", "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"model": "m", "input": "x", "metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"model": "m", "input": "x", "metadata": {"k": 5}}, "metadata.k"),
    ],
)
def test_bad_bodies_name_their_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        read_create(body)
    assert error.value.param == param


def test_metadata_within_openais_bounds_passes() -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert len(metadata) == 16
    request = read_create({"model": "m", "input": "x", "metadata": metadata})
    payload = orjson.loads(engine_payload(request, request.new_items, "resp_g", "m", None))
    assert payload["metadata"] == metadata


def test_fields_the_engine_judges_pass_through() -> None:
    request = read_create({"model": "m", "input": "x", "temperature": "hot", "tools": 3})
    payload = orjson.loads(engine_payload(request, request.new_items, "resp_g", "m", None))
    assert payload["temperature"] == "hot" and payload["tools"] == 3
    assert payload["input"] == "x"  # a first turn's string input is sent as given


def test_a_follow_up_sends_the_whole_conversation_without_the_previous_id() -> None:
    request = read_create(
        {
            "model": "m",
            "input": "And then?",
            "previous_response_id": "resp_1",
            "request_id": "resp_chosen_by_client",
            "background": False,
        }
    )
    items, ids = conversation(_stored(), request)
    assert [i["role"] for i in items] == ["user", "assistant", "user"]
    assert ids[:2] == ["msg_u", "msg_a"] and ids[2].startswith("msg_")
    payload = orjson.loads(engine_payload(request, items, "resp_g", "served", 8))
    assert "previous_response_id" not in payload and "background" not in payload
    assert payload["store"] is False
    assert payload["request_id"] == "resp_g"  # never the client's
    assert payload["model"] == "served"
    assert payload["max_output_tokens"] == 8  # what the limiter reserved
    assert payload["input"] == items


def test_the_output_cap_never_raises_what_the_client_asked() -> None:
    request = read_create({"model": "m", "input": "x", "max_output_tokens": 5})
    payload = orjson.loads(engine_payload(request, request.new_items, "r", "m", 50))
    assert payload["max_output_tokens"] == 5


def test_cost_counts_instructions_history_and_output_wanted() -> None:
    request = read_create(
        {"model": "m", "input": "four", "instructions": "be nice", "max_output_tokens": 9}
    )
    items, _ = conversation(_stored(), request)
    body = cost_body(request, items)
    assert [m["content"] for m in body["messages"]] == ["be nice", "Hello", "Hi!", "four"]
    assert body["max_tokens"] == 9


def test_another_owner_gets_not_found() -> None:
    missing = PreviousResponseNotFoundError("resp_1")
    assert check_found(_stored(), "alice", missing).owner == "alice"
    with pytest.raises(PreviousResponseNotFoundError) as error:
        check_found(_stored("bob"), "alice", missing)
    assert error.value.status == 404 and error.value.code == "previous_response_not_found"


def test_records_round_trip_and_damage_reads_as_absent() -> None:
    record = _stored()
    assert StoredResponse.decode("resp_1", record.encode()) == record
    assert StoredResponse.decode("resp_1", b"{not json") is None
    assert StoredResponse.decode("resp_1", b'{"owner":"a","response":{},"input":[1]}') is None


def test_input_items_pages() -> None:
    items = [{"role": "user", "content": str(n)} for n in range(5)]
    record = StoredResponse("r", "a", {}, items, [f"i{n}" for n in range(5)])
    page = input_items_page(record, {"limit": "2"})
    assert [i["id"] for i in page["data"]] == ["i4", "i3"] and page["has_more"] is True
    assert page["data"][0]["content"] == [{"type": "input_text", "text": "4"}]
    assert page["data"][0]["type"] == "message"
    rest = input_items_page(record, {"order": "asc", "after": "i2"})
    assert [i["id"] for i in rest["data"]] == ["i3", "i4"] and rest["has_more"] is False
    assert (rest["first_id"], rest["last_id"]) == ("i3", "i4")
    for query in ({"limit": "0"}, {"limit": "x"}, {"order": "up"}, {"after": "nope"}):
        with pytest.raises(InvalidRequestError):
            input_items_page(record, query)


DUPLICATED = [
    {"id": "dup", "role": "user", "content": "a"},
    {"id": "x", "content": "b"},
    {"id": "dup", "role": "user", "content": "c"},
]


@pytest.mark.parametrize(
    ("previous", "new", "twice"),
    [
        (False, DUPLICATED, "dup"),
        (True, [ANSWER], "msg_a"),  # the previous output sent again with previous_response_id
    ],
)
def test_an_item_id_given_twice_is_a_400(
    previous: bool, new: list[dict[str, Any]], twice: str
) -> None:
    """Bug hunt: repeated ids were stored, and the SDK's input-items paging (``after``
    an id) then went round in a loop for ever."""
    body: dict[str, Any] = {"model": "m", "input": new}
    if previous:
        body["previous_response_id"] = "resp_1"
    with pytest.raises(InvalidRequestError, match=f"Duplicate item found with id '{twice}'"):
        conversation(_stored() if previous else None, read_create(body))
