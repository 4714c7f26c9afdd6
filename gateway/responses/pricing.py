"""What a ``POST /v1/responses`` request is priced by, and the cap on its text.

Admission prices a Responses request as it prices a chat one
(:func:`gateway.ratelimit.cost.request_cost`): :func:`cost_body` writes the
conversation it continues (instructions, the previous response's items, the new input)
as chat-shaped messages, with the request's ``tools`` and ``max_output_tokens``;
``server.max_prompt_chars`` caps the same text (:func:`check_text_size`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequestError
from gateway.ratelimit.cost import part_text, priced_text_chars

if TYPE_CHECKING:
    from gateway.responses.conversation import CreateRequest


def cost_body(request: CreateRequest, items: list[Any]) -> dict[str, Any]:
    """What admission prices (:func:`gateway.ratelimit.cost.request_cost`): the
    conversation's text as messages, its non-text parts (images, files, audio) as one
    message of parts, priced as chat's are, the request's ``tools``, and
    ``max_output_tokens`` as the output wanted."""
    texts: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    instructions = request.body.get("instructions")
    if isinstance(instructions, str):
        texts.append({"content": instructions})
    for item in items:
        texts.extend({"content": text} for text in _texts(item, media))
    if media:
        texts.append({"content": media})
    return {
        "messages": texts,
        "tools": request.body.get("tools"),
        "max_tokens": request.max_output_tokens,
    }


def check_text_size(priced: dict[str, Any], max_chars: int) -> None:
    """400 when the conversation's text (``priced``: :func:`cost_body`'s, instructions
    included) is more than ``max_chars`` characters, as a chat's messages are
    (``server.max_prompt_chars``; the whole conversation, continued turns included),
    counted by the walk the token estimate makes (:func:`priced_text_chars`): the
    ``tools`` it prices count too (they did not: a request carried unbounded ``tools``
    past the cap)."""
    if priced_text_chars(priced) > max_chars:
        raise InvalidRequestError(f"request text exceeds {max_chars} characters", param="input")


_UNRENDERED = frozenset({"type", "id", "status", "role"})
"""An item's string fields the engine does not put in front of the model."""


def _texts(item: Any, media: list[dict[str, Any]]) -> list[str]:
    """The text of one input or output item: a message's content (its string, or its
    parts' text); any other item's every string field but :data:`_UNRENDERED` (a
    function call's ``name``, ``call_id`` and ``arguments`` become a chat tool call the
    template renders, as chat prices ``tool_calls`` by their JSON; an output's
    ``output``), and its parts' text. Parts without text are added to ``media``."""
    if not isinstance(item, dict):
        return []
    if item.get("type", "message") == "message":
        content = item.get("content")
        found = [content] if isinstance(content, str) else []
    else:
        found = [v for k, v in item.items() if isinstance(v, str) and k not in _UNRENDERED]
    for key in ("content", "summary", "output"):
        parts = item.get(key)
        if isinstance(parts, list):
            for part in parts:
                if not isinstance(part, dict):
                    continue
                text = part_text(part)  # by its type, as for chat's parts
                if text is not None:
                    found.append(text)
                else:
                    media.append(part)
    return found
