"""What a Responses create keeps of its conversation once admitted, and what it reads
of an engine's response object (its tokens used).

Nothing decoded from the previous record outlives the admission: a follow-up keeps
its conversation and the items' ids encoded (the ids as decoded, one ``str`` each,
took ~1.7 MB for a record of 20,000 items, alive until the engine answered) and
its affinity key already made (the first item's content, a decoded string of the
record, kept alive with it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.pipeline.parsing import affinity_key
from gateway.responses.conversation import CreateRequest


@dataclass(frozen=True, slots=True)
class Turn:
    """What a create keeps of its conversation once admitted: the items encoded (the
    decoded ones, up to ~24x a record's bytes, are dropped), their ids encoded (a JSON
    array), and its affinity key (None: the model's policy wants none). ``cuts``: the
    offsets of the items' slices (:mod:`gateway.responses.record_layout`)."""

    items: bytes
    cuts: list[int]
    item_ids: bytes
    key: bytes | None


@dataclass(frozen=True, slots=True)
class Keyed:
    """What a request's affinity key is made from besides its conversation."""

    session_id: str | None
    prefix_chars: int

    def key(self, request: CreateRequest, items: list[Any]) -> bytes:
        first = first_content(request, items)
        return affinity_key(affinity_body(request, first), self.session_id, self.prefix_chars)


def parsed_answer(body: bytes) -> Any:
    """An engine's answer read again after a tap changed it (None when it does not read:
    the forwarder parsed it first)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


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
