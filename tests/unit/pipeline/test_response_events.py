"""Relaying a Responses stream: the final response is handed over before the client
sees it; an engine that stops early ends the stream with an error event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import UpstreamError
from gateway.pipeline.response_events import (
    FieldRestore,
    FinalResponseTap,
    SequenceMark,
    relay_response_events,
)
from gateway.upstream.relay import StreamOutcome


def _event(kind: str, **fields: Any) -> bytes:
    data = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class _Source:
    deadline: float | None = None

    def __init__(self, batches: list[bytes], fail: bool = False) -> None:
        self._batches = batches
        self._fail = fail
        self._sent = 0

    async def prime(self) -> None:
        return None

    async def batches(self) -> AsyncIterator[bytes]:
        while (batch := await self.next_batch()) is not None:
            yield batch

    async def next_batch(self) -> bytes | None:
        if self._sent < len(self._batches):
            self._sent += 1
            return self._batches[self._sent - 1]
        if self._fail:
            raise UpstreamError("engine stream broke")
        return None

    def close(self) -> None:
        return None


def _relay(source: _Source, seen: list[Any]) -> tuple[list[bytes], StreamOutcome]:
    outcome = StreamOutcome()

    async def on_final(response: dict[str, Any]) -> None:
        seen.append(("final", response))

    async def run() -> list[bytes]:
        out = []
        restore = FieldRestore("resp_prev")
        events = relay_response_events(
            source, outcome, lambda: 1.0, [restore], FinalResponseTap(), on_final, SequenceMark()
        )
        async for batch in events:
            seen.append(("batch", batch))
            out.append(batch)
        return out

    return asyncio.run(run()), outcome


def test_final_response_is_kept_before_the_client_sees_it() -> None:
    text = 'says "response.completed" inside'
    started = _event("response.created", response={"previous_response_id": None})
    delta = _event("response.output_text.delta", delta=text)
    done = _event("response.completed", response={"id": "resp_1", "previous_response_id": None})
    seen: list[Any] = []
    batches, outcome = _relay(_Source([started, delta, done]), seen)
    assert outcome.completed and outcome.error is None
    assert [kind for kind, _ in seen] == ["batch", "batch", "final", "batch"]
    assert seen[2][1] == {"id": "resp_1", "previous_response_id": "resp_prev"}
    assert b'"previous_response_id":"resp_prev"' in batches[0]


def test_an_early_end_becomes_an_error_event() -> None:
    seen: list[Any] = []
    batches, outcome = _relay(_Source([_event("response.created", response={})]), seen)
    assert not outcome.completed and outcome.error is not None
    assert batches[-1].startswith(b"event: error\ndata: ")
    error = orjson.loads(batches[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "upstream_error"
    _, failed = _relay(_Source([], fail=True), [])
    assert isinstance(failed.error, UpstreamError)


def test_an_engine_error_event_ends_the_stream_as_it_is() -> None:
    seen: list[Any] = []
    own = _event("error", code="x", message="boom", param=None)
    batches, outcome = _relay(_Source([own]), seen)
    assert batches == [own] and outcome.error is None


def test_an_engine_error_event_is_mapped_and_not_followed_by_a_second() -> None:
    """vLLM ends a failing stream with ``data: {"error": {...}}``: the client gets it in
    OpenAI's shape (here a context-length error on ``input``), and no second error event."""
    vllm_error = orjson.dumps(
        {"error": {"message": "This model's maximum context length is 2048 tokens.",
                   "type": "BadRequestError", "param": None, "code": 400}}
    )  # fmt: skip
    seen: list[Any] = []
    out, outcome = _relay(
        _Source([_event("response.created"), b"data: " + vllm_error + b"\n\n"]), seen
    )
    errors = [line for batch in out for line in batch.split(b"\n") if b'"error"' in line]
    assert len(errors) == 1, out
    error = orjson.loads(errors[0][len(b"data: ") :])["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded", "input", "invalid_request_error"
    )  # fmt: skip
    assert outcome.error is None and not outcome.completed
