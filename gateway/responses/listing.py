"""``GET /v1/responses/{id}/input_items``: a stored response's input as OpenAI lists it.

Items are shown in OpenAI's listing shape: a message whose ``content`` is a string
gets it as one ``input_text`` part (``output_text`` for the assistant), every item
carries its ``id`` (:attr:`StoredResponse.input_ids`), and every kind of item that
OpenAI lists with a ``status`` has one (``completed`` unless the item says otherwise:
a client's ``function_call`` or ``function_call_output`` input may leave it out, and
the SDK's listed item types require it), as a message's parts have the fields OpenAI
lists with them (:data:`PART_DEFAULTS`). Only the listing is filled in: the record
keeps the items as the engine got them. Pages follow OpenAI's
parameters: ``order`` (``desc`` by default), ``limit`` (1 to 100, 20 by default),
``after`` (an item id: the items after it in that order).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.responses.conversation import shown_id
from gateway.responses.store import StoredResponse

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

WITH_STATUS = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "computer_call",
        "computer_call_output",
        "file_search_call",
        "web_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "tool_search_call",
        "tool_search_output",
        "program_output",
    }
)
"""The item types OpenAI lists with a ``status`` (the SDK's ``ResponseItem`` types that
require one, and messages)."""


def input_items_page(record: StoredResponse, query: Mapping[str, str]) -> dict[str, Any]:
    """One page of ``record``'s input items for the query string ``query``."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError(
            "Invalid 'order': expected 'asc' or 'desc'.", param="order", code="invalid_value"
        )
    limit_text = query.get("limit", str(DEFAULT_LIMIT))
    # ASCII digits only: str.isdigit() also admits '²' (which int() refuses) and other
    # scripts' digits; a few of them bound int()'s work.
    plain = limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 4
    if not plain or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer from 1 to {MAX_LIMIT}.",
            param="limit",
            code="invalid_value",
        )
    limit = int(limit_text)
    pairs = list(zip(record.input_ids, record.input_items, strict=True))
    if order == "desc":
        pairs.reverse()
    after = query.get("after")
    if after is not None:
        position = next((i for i, (item_id, _) in enumerate(pairs) if item_id == after), None)
        if position is None:
            raise InvalidRequestError(
                f"Invalid 'after': no input item '{shown_id(after)}' in this response.",
                param="after",
                code="invalid_value",
            )
        pairs = pairs[position + 1 :]
    page = [listed(item_id, item) for item_id, item in pairs[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(pairs) > limit,
    }


def listed(item_id: str, item: Any) -> dict[str, Any]:
    """One item as listed: with its id, a message's string content as one part (its
    parts with :data:`PART_DEFAULTS`), and a ``status`` where its type has one."""
    shown: dict[str, Any] = dict(item) if isinstance(item, dict) else {"content": item}
    shown["id"] = item_id
    role = shown.get("role")
    if isinstance(role, str) and "type" not in shown:
        shown["type"] = "message"
    content = shown.get("content")
    if shown.get("type") == "message" and isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        part: dict[str, Any] = {"type": kind, "text": content}
        if kind == "output_text":
            part["annotations"] = []
        shown["content"] = [part]
    elif shown.get("type") == "message" and isinstance(content, list):
        shown["content"] = [_listed_part(part) for part in content]
    item_type = shown.get("type")
    if isinstance(item_type, str) and item_type in WITH_STATUS and shown.get("status") is None:
        shown["status"] = "completed"  # (isinstance first: a client's type may be a list)
    return shown


PART_DEFAULTS: Mapping[str, tuple[str, Any]] = MappingProxyType(
    {"output_text": ("annotations", ()), "input_image": ("detail", "auto")}
)
"""What OpenAI lists in a message's part that a client may leave out of its input
(an ``output_text`` without ``annotations``, an ``input_image`` without ``detail``):
the part as listed has it, as the SDK's types require (``()``: an empty list)."""


def _listed_part(part: Any) -> Any:
    """``part`` with the field :data:`PART_DEFAULTS` gives its type, if it lacks it."""
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    default = PART_DEFAULTS.get(kind) if isinstance(kind, str) else None
    if default is None or part.get(default[0]) is not None:
        return part
    name, value = default
    return {**part, name: list(value) if isinstance(value, tuple) else value}
