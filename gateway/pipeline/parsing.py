"""Reading a completion request: JSON body, schema validation, and its affinity key.

Pure functions, no I/O: validation errors become OpenAI-style 400s naming the
offending field (``messages[0].role``), and the affinity key is what prefix
routing hashes.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequestError
from gateway.protocol import NORMALIZED_FIELDS

CHARS_PER_TOKEN = 4
"""A token-id prompt's affinity budget: ``prefix_chars // 4`` leading tokens, about as
much of the prompt as ``prefix_chars`` characters of text."""

MAX_DEPTH = 254
"""The deepest nesting a body may have: what orjson can write back (the gateway
rewrites bodies: the served model name, the usage request, the token budget), and
far beyond any real request. Deeper bodies are refused with a 400."""


def affinity_key(
    body: dict[str, Any], session_id: str | None, prefix_chars: int, prompt_field: str = "prompt"
) -> bytes:
    """What identifies a conversation: the session header, ``user``, or the prompt's start.

    Keying on the first message (usually the system prompt) keeps every turn of a
    conversation, and every request that shares a system prompt, on the engine
    whose prefix cache already holds it; the imbalance guard spreads hot prefixes.
    A prompt of token ids is keyed by its leading tokens (``prefix_chars //
    CHARS_PER_TOKEN`` of them), so prompts that merely start with the same BOS
    token still spread over the engines. Total over any JSON object: parts of
    the wrong type are skipped, never raised on. ``prompt_field`` is where the route
    keeps its prompt (``input`` for embeddings).
    """
    if session_id:
        return b"s:" + session_id.encode()
    user = body.get("user")
    if isinstance(user, str) and user:
        return b"u:" + user.encode()
    prompt = body.get(prompt_field)
    if prompt is None:
        return b"p:" + _first_message_text(body.get("messages"), prefix_chars).encode()
    first = prompt[0] if isinstance(prompt, list) and prompt else prompt
    if isinstance(first, str):
        return b"p:" + first[:prefix_chars].encode()
    tokens = first if isinstance(first, list) else prompt if isinstance(prompt, list) else ()
    leading = tokens[: max(1, prefix_chars // CHARS_PER_TOKEN)]
    return b"t:" + ",".join(str(t) for t in leading if isinstance(t, int)).encode()


def _first_message_text(messages: Any, limit: int) -> str:
    """The start of the first message's text: the part every turn of a conversation
    (and every request sharing a system prompt) has in common."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return ""
    content = messages[0].get("content")
    if isinstance(content, str):
        return content[:limit]
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    size = 0
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str):
            texts.append(text)
            size += len(text)
            if size >= limit:
                break
    return "".join(texts)[:limit]


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else, or one nested deeper than
    :data:`MAX_DEPTH`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    _check_depth(raw, body)
    return body


def _check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """400 when ``body`` nests deeper than :data:`MAX_DEPTH`.

    A body with fewer opening brackets than that cannot be too deep (brackets inside
    strings only add to the count): two scans in C, no walk. Otherwise orjson, which
    refuses to write anything deeper, says: one serialisation (about 1 ms per MB)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise InvalidRequestError(
            f"request body is nested more than {MAX_DEPTH} levels deep"
        ) from None


def normalized(body: dict[str, Any], request: BaseModel) -> dict[str, Any]:
    """``body`` with the validated value of each field the gateway computes with
    (:data:`gateway.protocol.NORMALIZED_FIELDS`) where the client wrote it otherwise
    (``n: 2.0`` → ``2``, ``temperature: 1`` → ``1.0``): the rate limits, the cache
    and routing read this body, the engine gets the client's bytes. The same dict
    when nothing differs (the usual case: a few type checks)."""
    changed: dict[str, Any] | None = None
    for name in NORMALIZED_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        valid = getattr(request, name, value)
        if type(valid) is not type(value) or valid != value:
            changed = {} if changed is None else changed
            changed[name] = valid
    return body if changed is None else body | changed


def validate(schema: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_path(first["loc"])
        message = _STRICT_MESSAGES.get(first["type"], first["msg"])
        raise InvalidRequestError(f"{param}: {message}", param=param) from None


_STRICT_MESSAGES = {"bool_type": "must be a JSON boolean (true or false)"}
"""Plainer words for the errors of the strict fields (pydantic's: "Input should be a
valid boolean", which ``"true"`` looks like it is)."""


def _param_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "role")`` → ``messages[0].role``; union member tags are dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _UNION_TAGS or "[" in part:
            break
        else:
            path += f".{part}" if path else part
    return path or "body"


_UNION_TAGS = frozenset(
    {"str", "int", "float", "bool", "none", "StreamOptions", "ChatMessage", "function-after"}
)
