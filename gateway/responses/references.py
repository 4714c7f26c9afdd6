"""``{"type": "item_reference", "id": ...}`` input items, resolved by the gateway.

OpenAI's Responses API lets a client name an item of an earlier stored response by
its id instead of sending it again (``type`` may be left out: ``{"id": ...}``).
vLLM does not resolve one: its conversion of Responses input to chat messages has
no case for it and passes the item on as a message with neither role nor content
(and its only store is one engine's memory, off by default). The gateway
resolves each one within the conversation the request continues: the input and
output items of ``previous_response_id``'s record (by the ids the gateway lists
them under, :attr:`StoredResponse.input_ids`, and the output items' own ids). The
item found takes the reference's place, whole, as the engine and the next record
get it; an id not found there (or any reference in a request that continues no
conversation) is a 400 naming it
(:class:`gateway.responses.conversation.ItemNotFoundError`).
"""

from __future__ import annotations

from typing import Any

from gateway.responses.store import StoredResponse

REFERENCE = "item_reference"


class UnresolvedReference(LookupError):
    """An item reference whose id (``item_id``) the conversation does not hold."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


class RepeatedReference(ValueError):
    """An id (``item_id``) that more than one reference of a request names."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


def is_reference(item: Any) -> bool:
    """Whether ``item`` is an item reference: ``type: "item_reference"``, or an object
    of an ``id`` and no more (as OpenAI's ``ItemReference``, whose ``type`` may be
    left out)."""
    if not isinstance(item, dict):
        return False
    kind = item.get("type")
    if kind == REFERENCE:
        return True
    return kind is None and "id" in item and item.keys() <= {"id", "type"}


def resolved(new: list[Any], previous: StoredResponse | None) -> tuple[list[Any], list[int]]:
    """``new`` with each reference replaced by the item it names in ``previous``'s
    conversation, and the positions replaced; ``new`` itself when it holds none.
    Raises :class:`UnresolvedReference` for a reference the conversation lacks, and
    :class:`RepeatedReference` for an id referenced twice (see the module docstring)."""
    places = [n for n, item in enumerate(new) if is_reference(item)]
    if not places:
        return new, places
    found = _items_by_id(previous)
    items = list(new)
    used: set[str] = set()
    for place in places:
        item_id = items[place].get("id")
        if not isinstance(item_id, str) or item_id not in found:
            raise UnresolvedReference(item_id if isinstance(item_id, str) else "")
        if item_id in used:
            raise RepeatedReference(item_id)
        used.add(item_id)
        items[place] = found[item_id]
    return items, places


def _items_by_id(previous: StoredResponse | None) -> dict[str, Any]:
    """``previous``'s input items by their listing ids, and its output items by their
    own (each an item of the conversation the next turn continues)."""
    if previous is None:
        return {}
    found = dict(zip(previous.input_ids, previous.input_items, strict=True))
    for item in previous.output:
        own = item.get("id") if isinstance(item, dict) else None
        if isinstance(own, str) and own:
            found[own] = item
    return found
