"""What a Responses create keeps of its conversation once admitted, and what it reads
of an engine's response object (its tokens used)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.responses.conversation import CreateRequest


@dataclass(frozen=True, slots=True)
class Turn:
    """What a create keeps of its conversation once admitted: the items encoded (the
    decoded ones, up to ~24x a record's bytes, are dropped), their ids, and the start
    prefix affinity keys on."""

    items: bytes
    item_ids: list[str]
    first: Any


def usage_tokens(response: dict[str, Any]) -> int | None:
    """The tokens a response used: ``usage.total_tokens``, else input + output."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    given, made = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(given, int) and isinstance(made, int):
        return given + made
    return None


def first_content(request: CreateRequest, items: list[Any]) -> Any:
    """The start every turn of the conversation shares: its instructions, else its
    first item's content."""
    first: Any = request.body.get("instructions")
    if not isinstance(first, str):
        head = items[0] if items else None
        first = head.get("content") if isinstance(head, dict) else None
    return first


def affinity_body(request: CreateRequest, first: Any) -> dict[str, Any]:
    """What prefix affinity keys on: ``user``, else :func:`first_content`."""
    return {"user": request.body.get("user"), "messages": [{"content": first}]}
