"""A request's priority: the key's tier, lowered (never raised) by the header or the body,
and written into the engine's body only where it must be."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.auth.authenticator import Principal
from gateway.errors import InvalidRequestError
from gateway.pipeline.plan import ParsedRequest
from gateway.pipeline.priority import PriorityTiers
from gateway.routing.policies import RoundRobin

HIGH = Principal("chat", None, priority=-10)
NORMAL = Principal("web", None)


def parsed(body: dict[str, Any]) -> ParsedRequest:
    return ParsedRequest("m", False, body, orjson.dumps(body), RoundRobin(), None)


@pytest.mark.parametrize(
    ("principal", "header", "body", "expected"),
    [
        (HIGH, None, {}, -10),
        (HIGH, "low", {}, 10),  # lowered by the header
        (NORMAL, "high", {}, 0),  # never raised by it
        (NORMAL, "-5", {}, 0),
        (NORMAL, " 7 ", {}, 7),
        (HIGH, None, {"priority": -1000}, -10),  # nor by the body
        (HIGH, None, {"priority": 3}, 3),
        (NORMAL, "5", {"priority": 8}, 8),
    ],
)
def test_a_client_may_lower_its_priority_never_raise_it(
    principal: Principal, header: str | None, body: dict[str, Any], expected: int
) -> None:
    place = PriorityTiers().place(principal, header, body)
    assert place.key == principal.name and place.priority == expected


@pytest.mark.parametrize(
    ("header", "body"),
    [("urgent", {}), ("", {}), ("1" * 40, {}), ("1.5", {}), (None, {"priority": "high"}),
     (None, {"priority": True}), (None, {"priority": 2**40}), (None, {"priority": 1.0})],
)  # fmt: skip
def test_an_invalid_priority_is_a_400(header: str | None, body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        PriorityTiers().place(NORMAL, header, body)
    assert refused.value.status == 400 and refused.value.code == "invalid_priority"


def test_the_engine_gets_the_tier_only_when_tiers_reach_engines() -> None:
    request = parsed({"model": "m", "prompt": "hi"})
    place = PriorityTiers().place(HIGH, None, request.body)
    assert PriorityTiers(reach_engines=False).apply(request, place) is request
    sent = PriorityTiers(reach_engines=True).apply(request, place)
    assert orjson.loads(sent.payload) == {"model": "m", "prompt": "hi", "priority": -10}
    assert sent.body["priority"] == -10


def test_a_default_priority_request_is_forwarded_byte_for_byte() -> None:
    request = parsed({"model": "m", "prompt": "hi"})
    place = PriorityTiers(reach_engines=True).place(NORMAL, None, request.body)
    assert PriorityTiers(reach_engines=True).apply(request, place) is request


def test_a_clients_earlier_priority_is_overwritten_even_with_tiers_off() -> None:
    request = parsed({"model": "m", "priority": -50})
    place = PriorityTiers().place(NORMAL, None, request.body)
    sent = PriorityTiers(reach_engines=False).apply(request, place)
    assert orjson.loads(sent.payload)["priority"] == 0
