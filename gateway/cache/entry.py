"""What the cache stores about one answer, how it is collected, and how it is replayed.

An entry is format-neutral: per choice, the text in the pieces it arrived in
and the finish reason, plus ``usage``. It is collected from a non-streaming
body or from a stream's events, and replayed either way: as one
``chat.completion`` / ``text_completion`` body, or as SSE chunks (the role
delta first, one chunk per stored piece, the finish chunk, the usage chunk if
the client asked for it, ``[DONE]``). Replays carry a fresh ``id`` and
``created`` and the model name the client used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
FORMAT_VERSION = 1


@dataclass
class Choice:
    index: int
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Entry:
    """One cached answer."""

    chat: bool
    choices: list[Choice]
    usage: dict[str, Any] | None
    created_at: float = field(default_factory=time.time)

    @property
    def complete(self) -> bool:
        return bool(self.choices) and all(c.finish_reason for c in self.choices)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": FORMAT_VERSION,
                "chat": self.chat,
                "created_at": self.created_at,
                "usage": self.usage,
                "choices": [
                    {"index": c.index, "pieces": c.pieces, "finish_reason": c.finish_reason}
                    for c in self.choices
                ],
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """The entry, or None for anything this version cannot replay."""
        try:
            data = orjson.loads(raw)
            if data.get("v") != FORMAT_VERSION:
                return None
            choices = [
                Choice(int(c["index"]), [str(p) for p in c["pieces"]], c["finish_reason"])
                for c in data["choices"]
            ]
            return cls(bool(data["chat"]), choices, data.get("usage"), float(data["created_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def from_body(body: bytes, chat: bool) -> Entry | None:
    """An entry from a non-streaming answer, or None if it cannot be replayed faithfully."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return None
    choices: list[Choice] = []
    for raw in data["choices"]:
        if not isinstance(raw, dict) or raw.get("logprobs") is not None:
            return None
        if chat:
            message = raw.get("message") or {}
            text = message.get("content")
            if message.get("tool_calls") or not isinstance(text, str):
                return None
        else:
            text = raw.get("text")
            if not isinstance(text, str):
                return None
        choices.append(Choice(int(raw.get("index", 0)), [text], raw.get("finish_reason")))
    usage = data.get("usage")
    return Entry(chat, choices, usage if isinstance(usage, dict) else None)


class StreamCollector:
    """Builds an entry from a relayed stream, batch by batch; gives up on anything odd."""

    def __init__(self, chat: bool) -> None:
        self.entry = Entry(chat, [], None)
        self.usable = True
        self._by_index: dict[int, Choice] = {}

    def feed(self, batch: bytes) -> list[tuple[int, str]]:
        """Read one batch of events; returns the new text pieces as (choice, text)."""
        new: list[tuple[int, str]] = []
        if not self.usable:
            return new
        for event in batch.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                self.usable = False
                return new
            if isinstance(data.get("usage"), dict) and not data.get("choices"):
                self.entry.usage = data["usage"]
            for raw in data.get("choices") or ():
                piece = self._piece(raw)
                if piece is None:
                    self.usable = False
                    return new
                if piece[1]:
                    new.append(piece)
        return new

    def _piece(self, raw: Any) -> tuple[int, str] | None:
        if not isinstance(raw, dict) or raw.get("logprobs") is not None:
            return None
        index = int(raw.get("index", 0))
        choice = self._by_index.get(index)
        if choice is None:
            choice = self._by_index[index] = Choice(index)
            self.entry.choices.append(choice)
        if self.entry.chat:
            delta = raw.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                return None
            text = delta.get("content") or ""
        else:
            text = raw.get("text") or ""
        if not isinstance(text, str):
            return None
        if text:
            choice.pieces.append(text)
        if raw.get("finish_reason"):
            choice.finish_reason = raw["finish_reason"]
        return index, text


def json_body(entry: Entry, model: str) -> bytes:
    """The entry as a non-streaming response body."""
    choices: list[dict[str, Any]] = []
    for choice in entry.choices:
        item: dict[str, Any] = {"index": choice.index}
        if entry.chat:
            item["message"] = {"role": "assistant", "content": choice.text}
        else:
            item["text"] = choice.text
        item["logprobs"] = None
        item["finish_reason"] = choice.finish_reason
        choices.append(item)
    body: dict[str, Any] = {
        "id": _new_id(entry.chat),
        "object": "chat.completion" if entry.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if entry.usage is not None:
        body["usage"] = entry.usage
    return orjson.dumps(body)


class ChunkWriter:
    """SSE chunks of one replayed stream (one fresh id for all of them)."""

    def __init__(self, chat: bool, model: str) -> None:
        self._chat = chat
        self._envelope = {
            "id": _new_id(chat),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def role(self, index: int) -> bytes:
        return self._chunk(index, {"role": "assistant", "content": ""}, None) if self._chat else b""

    def piece(self, index: int, text: str) -> bytes:
        return self._chunk(index, {"content": text} if self._chat else text, None)

    def finish(self, index: int, reason: str | None) -> bytes:
        return self._chunk(index, {} if self._chat else "", reason)

    def usage(self, usage: dict[str, Any]) -> bytes:
        return _event({**self._envelope, "choices": [], "usage": usage})

    def _chunk(self, index: int, payload: Any, finish_reason: str | None) -> bytes:
        choice: dict[str, Any] = {"index": index}
        choice["delta" if self._chat else "text"] = payload
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        return _event({**self._envelope, "choices": [choice]})


def sse_replay(entry: Entry, model: str, include_usage: bool) -> bytes:
    """A whole stored answer as one run of SSE events, ``[DONE]`` included."""
    writer = ChunkWriter(entry.chat, model)
    parts = [writer.role(c.index) for c in entry.choices]
    for choice in entry.choices:
        parts.extend(writer.piece(choice.index, piece) for piece in choice.pieces)
    parts.extend(writer.finish(c.index, c.finish_reason) for c in entry.choices)
    if include_usage and entry.usage is not None:
        parts.append(writer.usage(entry.usage))
    parts.append(DONE)
    return b"".join(parts)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + os.urandom(12).hex()
