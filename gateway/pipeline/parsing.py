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


def affinity_key(body: dict[str, Any], session_id: str | None, prefix_chars: int) -> bytes:
    """What identifies a conversation: the session header, ``user``, or the prompt's start.

    Keying on the first message (usually the system prompt) keeps every turn of a
    conversation, and every request that shares a system prompt, on the engine
    whose prefix cache already holds it; the imbalance guard spreads hot prefixes.
    """
    if session_id:
        return b"s:" + session_id.encode()
    user = body.get("user")
    if isinstance(user, str) and user:
        return b"u:" + user.encode()
    return b"p:" + _prompt_prefix(body, prefix_chars).encode()


def _prompt_prefix(body: dict[str, Any], limit: int) -> str:
    """The start of the prompt, or of the first message: the part every turn of a
    conversation (and every request sharing a system prompt) has in common."""
    prompt = body.get("prompt")
    if prompt is not None:
        first = prompt[0] if isinstance(prompt, list) and prompt else prompt
        return str(first)[:limit]
    messages: list[dict[str, Any]] = body.get("messages") or [{}]
    content = messages[0].get("content")
    if isinstance(content, str):
        return content[:limit]
    texts = [p.get("text", "") for p in content or () if isinstance(p, dict)]
    return "".join(texts)[:limit]


def decode_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return body


def validate(schema: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_path(first["loc"])
        raise InvalidRequestError(f"{param}: {first['msg']}", param=param) from None


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


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "StreamOptions", "ChatMessage"})
