"""A ``POST /v1/responses`` body: what the gateway checks, and what the engine gets.

The gateway validates only what it acts on (``model``, ``input``, ``stream``,
``store``, ``background``, ``conversation``, ``previous_response_id``,
``instructions``, ``max_output_tokens``), and ``seed`` within 64 bits as chat does;
every other field passes to the engine, which judges it, integers beyond 64 bits
exactly as written (:mod:`gateway.protocol.exact_json`).

A follow-up (``previous_response_id``) is expanded here: the engine gets the whole
conversation as ``input`` (the previous response's input items, then its output
items, then the new input) with no ``previous_response_id`` and ``store: false``,
so any engine can answer it and none has to remember anything. A ``conversation``
(OpenAI's Conversations API, which the gateway does not offer) is a 400, as
``background`` is: an engine ignores the field, and would answer without the
conversation's items, silently. As at OpenAI, the
previous request's ``instructions`` are not carried over.

The number of items is capped (``server.max_messages``, what caps a chat request's
messages): the new ``input`` right after the body is decoded, before any per-item
work, and the whole conversation a follow-up sends (the previous response's input
and output items plus the new ones) once the previous record is loaded: that is what
the engine gets, and what a chat request could not send either.

An ``item_reference`` among the new items is replaced by the item of the previous
conversation it names (:mod:`gateway.responses.references`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config.sections import MAX_MESSAGES
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway.protocol.exact_json import ExactSource, encoded_exactly, is_beyond_64_bits
from gateway.responses.encoding import exact_size
from gateway.responses.references import RepeatedReference, UnresolvedReference, resolved
from gateway.responses.store import StoredResponse

MAX_ITEMS = MAX_MESSAGES
"""The default cap on a request's items: ``server.max_messages``' default."""


class ResponseNotFoundError(NotFoundError):
    """A response id that does not exist for this key (404, as at OpenAI)."""

    def __init__(self, response_id: str, param: str = "response_id") -> None:
        super().__init__(f"Response with id '{shown_id(response_id)}' not found.", param=param)


class PreviousResponseNotFoundError(ResponseNotFoundError):
    code = "previous_response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(response_id, "previous_response_id")
        self.message = f"Previous response with id '{shown_id(response_id)}' not found."


SHOWN_ID_CHARS = 64


def shown_id(response_id: str) -> str:
    """An id as an error message echoes it: its first 64 characters, then "…" (the
    gateway's ids are 37; a client's 100 KB one is not sent back whole)."""
    if len(response_id) <= SHOWN_ID_CHARS:
        return response_id
    return response_id[:SHOWN_ID_CHARS] + "…"


class ItemNotFoundError(InvalidRequestError):
    """An ``item_reference`` to an id the conversation does not hold (400, ``param:
    "input"``: :mod:`gateway.responses.references`)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(
            f"Item with id '{shown_id(item_id)}' not found in the conversation this "
            "request continues (previous_response_id).",
            param="input",
        )


class TooManyItemsError(InvalidRequestError):
    """More input items than ``server.max_messages`` (400, ``param: "input"``)."""

    def __init__(self, max_items: int, previous: int = 0) -> None:
        message = f"input: at most {max_items} input items per request"
        if previous:
            message += f" (the previous response's conversation has {previous})"
        super().__init__(message, param="input")


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """The fields of a create request the gateway acts on, checked."""

    body: dict[str, Any]
    model: str
    input: str | list[Any]
    stream: bool
    store: bool
    previous_response_id: str | None
    max_output_tokens: int | None

    @property
    def new_items(self) -> list[Any]:
        """The new input as a list of items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input


def read_create(body: dict[str, Any], max_items: int = MAX_ITEMS) -> CreateRequest:
    """The checked request, or a 400 in OpenAI's words (more than ``max_items`` input
    items is one, before any item is looked at)."""
    model = _required(body, "model", str, "a string")
    given = _required(body, "input", (str, list), "a string or an array")
    if isinstance(given, list) and len(given) > max_items:
        raise TooManyItemsError(max_items)
    if isinstance(given, list) and not all(isinstance(item, dict) for item in given):
        raise InvalidRequestError(
            "Invalid 'input': every input item must be an object.",
            param="input",
            code="invalid_type",
        )
    stream = _optional(body, "stream", bool, "a boolean")
    store = _optional(body, "store", bool, "a boolean")
    if _optional(body, "background", bool, "a boolean"):
        raise InvalidRequestError(
            "background responses are not supported by this gateway: create the response "
            "without `background` (streamed or not).",
            param="background",
            code="unsupported_parameter",
        )
    if body.get("conversation") is not None:  # a conversation's items are state it lacks
        raise InvalidRequestError(
            "conversations are not supported by this gateway: continue a conversation "
            "with `previous_response_id`, or send its items as `input`.",
            param="conversation",
            code="unsupported_parameter",
        )
    previous = _optional(body, "previous_response_id", str, "a string")
    _optional(body, "instructions", str, "a string")
    _check_metadata(_optional(body, "metadata", dict, "an object"))
    _check_seed(body.get("seed"))
    cap = _optional(body, "max_output_tokens", int, "an integer")
    if isinstance(cap, bool) or (cap is not None and cap < 1):
        raise InvalidRequestError(
            "Invalid 'max_output_tokens': expected an integer of at least 1.",
            param="max_output_tokens",
            code="invalid_value",
        )
    return CreateRequest(body, model, given, stream is True, store is not False, previous, cap)


_INT64 = 2**63


def _beyond_64_bits(value: Any) -> bool:
    """An integer beyond 64 bits as the body was read: orjson's float for it (the body
    is read exactly only when it is written: :mod:`gateway.responses.encoding`), so
    any whole float of 2**63 or more in magnitude, or a fragment of an exact reading."""
    if type(value) is float:
        return value.is_integer() and abs(value) >= _INT64
    return is_beyond_64_bits(value)


def _check_seed(seed: Any) -> None:
    """400 for a ``seed`` beyond a 64-bit signed integer, as chat's is (vLLM's range);
    any other value is the engine's to judge."""
    if _beyond_64_bits(seed):
        raise _out_of_range("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and not -_INT64 <= seed < _INT64:
        raise _out_of_range("seed")


def _out_of_range(name: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid '{name}': integer out of range (a 64-bit signed integer at most).",
        param=name,
        code="invalid_value",
    )


METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
"""OpenAI's bounds on ``metadata``: pairs, a key's and a value's characters (the record
keeps it, and the engine echoes it in every answer and stream event that shows the
response)."""


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > METADATA_PAIRS:
        raise InvalidRequestError(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_PAIRS} properties, but got an object with {len(metadata)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise InvalidRequestError(
                f"Invalid 'metadata': a key is too long. Expected a key of at most "
                f"{METADATA_KEY_CHARS} characters, but got one of {len(key)} characters "
                "instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            raise InvalidRequestError(
                f"Invalid type for 'metadata.{shown_id(key)}': expected a string, but got "
                f"{_kind(value)} instead.",
                param=f"metadata.{shown_id(key)}",
                code="invalid_type",
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise InvalidRequestError(
                f"Invalid 'metadata.{shown_id(key)}': string too long. Expected a string "
                f"with maximum length {METADATA_VALUE_CHARS}, but got a string with length "
                f"{len(value)} instead.",
                param=f"metadata.{shown_id(key)}",
                code="string_above_max_length",
            )


def _required(body: dict[str, Any], name: str, kinds: Any, what: str) -> Any:
    if body.get(name) is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{name}'.",
            param=name,
            code="missing_required_parameter",
        )
    return _optional(body, name, kinds, what)


def _optional(body: dict[str, Any], name: str, kinds: Any, what: str) -> Any:
    value = body.get(name)
    if _beyond_64_bits(value):
        raise _out_of_range(name)
    bad_bool = kinds is int and isinstance(value, bool)
    if value is not None and (bad_bool or not isinstance(value, kinds)):
        raise InvalidRequestError(
            f"Invalid type for '{name}': expected {what}, but got {_kind(value)} instead.",
            param=name,
            code="invalid_type",
        )
    return value


def _kind(value: Any) -> str:
    if _beyond_64_bits(value):
        return "an integer beyond 64 bits"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")


def conversation(
    previous: StoredResponse | None, request: CreateRequest, max_items: int = MAX_ITEMS
) -> tuple[list[Any], list[str]]:
    """The engine's ``input`` items and their listing ids: the previous response's
    input and output, then the new input; a 400 when they are more than ``max_items``."""
    new = request.new_items
    if previous is not None:
        before = len(previous.input_items) + len(previous.output)
        if before + len(new) > max_items:
            raise TooManyItemsError(max_items, before)
    try:
        new, places = resolved(new, previous)
    except UnresolvedReference as exc:
        raise ItemNotFoundError(exc.item_id) from None
    except RepeatedReference as exc:
        raise _duplicate(exc.item_id) from None
    new_ids = [_item_id(item) for item in new]
    for place in places:  # listed anew: the item it names is in the conversation already
        new_ids[place] = _item_id(None)
    if previous is None:
        _check_unique(new_ids)
        return new, new_ids
    output = previous.output
    output_ids = [_item_id(item) for item in output]
    items = [*previous.input_items, *output, *new]
    ids = [*previous.input_ids, *output_ids, *new_ids]
    _check_unique(ids)
    return items, ids


def _check_unique(ids: list[str]) -> None:
    """400 for an item id given twice, as OpenAI answers: the input-items listing pages
    by id (``after``), and a repeated one would send a client round in a loop."""
    if len(set(ids)) == len(ids):
        return
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise _duplicate(item_id)
        seen.add(item_id)


def _duplicate(item_id: str) -> InvalidRequestError:
    """The 400 for an item id given twice (or referenced twice)."""
    return InvalidRequestError(f"Duplicate item found with id {item_id[:80]!r}.", param="input")


def _item_id(item: Any) -> str:
    """The item's own id, or a fresh one like OpenAI's (``msg_<hex>``)."""
    own = item.get("id") if isinstance(item, dict) else None
    return own if isinstance(own, str) and own else "msg_" + os.urandom(16).hex()


def new_response_id() -> str:
    """An id of the gateway's own for the engine's ``request_id`` (vLLM names its
    response after it): never the client's, so no client can choose the id under
    which its response is stored."""
    return "resp_" + os.urandom(16).hex()


def engine_payload(
    request: CreateRequest,
    items: list[Any] | orjson.Fragment,
    response_id: str,
    served_name: str,
    cap: int | None,
    source: bytes | ExactSource | None = None,
    cache_salt: str | None = None,
) -> bytes:
    """The body the engine gets (see the module docstring); ``cap`` is the output the
    rate limiter reserved, which the engine may not exceed; ``cache_salt`` the key's
    (:mod:`gateway.auth.prefix_salt`), in place of the client's. ``items`` a list, or an
    :class:`orjson.Fragment` of one (:func:`gateway.responses.encoding.encoded_items`);
    ``source`` the create body (its bytes, or them with the exact reading
    :func:`gateway.responses.encoding.encoded_items` may have made already), whose
    integers beyond 64 bits the body keeps exactly
    (:func:`gateway.protocol.exact_json.encoded_exactly`)."""
    body = dict(request.body)
    body.pop("previous_response_id", None)
    body.pop("background", None)
    continued = request.previous_response_id is not None
    body["input"] = items if continued or not isinstance(request.input, str) else request.input
    body["model"] = served_name
    body["store"] = False
    body["request_id"] = response_id
    if cap is not None and (request.max_output_tokens is None or request.max_output_tokens > cap):
        body["max_output_tokens"] = cap
    if cache_salt is not None:
        body["cache_salt"] = cache_salt
    return exact_size(orjson.dumps(body) if source is None else encoded_exactly(body, source))


def check_found(record: StoredResponse | None, owner: str, error: GatewayError) -> StoredResponse:
    """``record`` if ``owner`` made it; else ``error`` (another key's response does
    not exist for this one)."""
    if record is None or record.owner != owner:
        raise error
    return record
