"""Review: input-item paging parameters a hostile client may send are 400s, never 500s."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.responses.listing import input_items_page
from gateway.responses.store import StoredResponse


def _stored() -> StoredResponse:
    items = [{"type": "message", "role": "user", "content": "Hello"}]
    return StoredResponse("resp_1", "alice", {"id": "resp_1", "output": []}, items, ["msg_u"])


@pytest.mark.parametrize(
    "limit",
    [
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0661" * 2,  # Arabic-Indic digits: int() reads 11, not what a client means
        "9" * 5000,  # past int()'s digit limit
        "-1",
        "0",
        "101",
        "1e3",
        " 5",
    ],
)
def test_hostile_limits_are_refused_as_invalid(limit: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        input_items_page(_stored(), {"limit": limit})
    assert error.value.param == "limit"


def test_a_plain_limit_still_pages() -> None:
    page = input_items_page(_stored(), {"limit": "100"})
    assert [item["id"] for item in page["data"]] == ["msg_u"]
