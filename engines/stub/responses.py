"""``POST /v1/responses`` of the stub engine, shaped like vLLM 0.32's answers.

Like a vLLM engine started without ``VLLM_ENABLE_RESPONSES_API_STORE``, it keeps
nothing: a request naming a ``previous_response_id`` is refused with vLLM's 404
(``Response with id '...' not found.``), and ``background`` with ``store`` is
refused with vLLM's 400. So a gateway that wants follow-ups to work must send the
whole conversation itself, and tests can prove it does.

The answer's text is deterministic and starts with ``items=<n>``: how many input
items the request carried (a string ``input`` is one), so a test can see the
history arrive. The response id is the request's ``request_id`` when it sends
one (as vLLM does), else a fresh ``resp_<hex>``. Streams send vLLM's event
sequence (``response.created`` ... ``response.completed``), ``event:`` lines
included, one body message per text delta, ``itl_ms`` apart, and no ``[DONE]``.

Faults are acted out as on the completion routes (:func:`engines.stub.plan.injected_fault`):
``--fail-status`` (or ``"stub": {"fault": "error", "status": S}``) answers that status;
``--hang`` waits, unanswered, until the client leaves (a stream with ``after`` hangs
after that many text deltas); ``--drop-after N`` (or ``"fault": "drop"``) cuts a
stream's connection after N text deltas, and a whole answer half-way through its body.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import orjson

from engines.stub.asgi import (
    DROPPED,
    JSON,
    Receive,
    Scope,
    Send,
    act_out,
    read_body,
    send_bytes,
    wait_forever,
)
from engines.stub.output import SSE_HEADERS, error_body, token_texts
from engines.stub.plan import Fault, RequestError, StubConfig, injected_fault
from engines.stub.salts import check_cache_salt

if TYPE_CHECKING:
    from engines.stub.server import StubStats

PATH = "/v1/responses"


class ResponsesStub:
    """The ``/v1/responses`` handler of one stub app, counting into its ``stats``."""

    def __init__(self, config: StubConfig, stats: StubStats) -> None:
        self._config = config
        self._stats = stats

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        from engines.stub.server import RecordedRequest

        stats = self._stats
        stats.requests += 1
        stats.in_flight += 1
        try:
            raw = await read_body(receive)
            if raw is None:
                stats.requests_cancelled += 1
                return
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            stats.last_request = RecordedRequest(scope["path"], scope["headers"], body)
            try:
                answer = self._plan(body)
            except RequestError as error:
                await send_bytes(send, error.status, error_body(error), JSON)
                return
            await self._answer(answer, receive, send)
        finally:
            stats.in_flight -= 1

    async def _answer(self, answer: _Answer, receive: Receive, send: Send) -> None:
        """Send ``answer``, or act out its fault, as the completion routes do."""
        fault = answer.fault
        stream = (lambda: _send_events(answer, send)) if answer.stream else None
        if await act_out(self._stats, fault, stream, receive):
            return
        if fault is not None and fault.kind == "drop":  # half the body, then cut
            body = orjson.dumps(answer.final())
            headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send(
                {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            )
        else:
            await send_bytes(send, 200, orjson.dumps(answer.final()), JSON)

    def _plan(self, body: Any) -> _Answer:
        """What to answer, or the :class:`RequestError` vLLM would give (or a fault's)."""
        if not isinstance(body, dict):
            raise RequestError(400, "The request body is not a JSON object.")
        check_cache_salt(body)
        stream = body.get("stream") is True
        fault = injected_fault(self._config, body, stream)
        model = body.get("model")
        if model not in self._config.models:
            raise RequestError(
                404, f"The model `{model}` does not exist.", code="model_not_found", param="model"
            )
        items = body.get("input")
        if not isinstance(items, (str, list)):
            raise RequestError(400, "input: Field required", param="input")
        previous = body.get("previous_response_id")
        if previous is not None:
            raise RequestError(
                404, f"Response with id '{previous}' not found.", param="response_id"
            )
        if body.get("background") is True and body.get("store", True) is not False:
            raise RequestError(
                400,
                "This vLLM engine does not support `store=True` and therefore does not "
                "support the background mode.",
                param="background",
            )
        count = 1 if isinstance(items, str) else len(items)
        cap = body.get("max_output_tokens")
        tokens = self._config.tokens
        if isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap < tokens:
            tokens = cap
        texts = [f"items={count}", *token_texts(count, tokens)[1:]]
        request_id = body.get("request_id")
        response_id = request_id if isinstance(request_id, str) else "resp_" + os.urandom(16).hex()
        prompt_tokens = (len(orjson.dumps(items)) + 3) // 4
        itl_ms = self._config.itl_ms
        return _Answer(body, str(model), response_id, texts, prompt_tokens, itl_ms, stream, fault)


class _Answer:
    """One response: its text (one delta per token) and its response objects."""

    def __init__(
        self,
        body: dict[str, Any],
        model: str,
        response_id: str,
        texts: list[str],
        prompt_tokens: int,
        itl_ms: float,
        stream: bool = False,
        fault: Fault | None = None,
    ) -> None:
        self.body = body
        self.model = model
        self.id = response_id
        self.texts = texts
        self.item_id = "msg_" + os.urandom(16).hex()
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.itl_s = itl_ms / 1000
        self.stream = stream
        self.fault = fault
        """What to act out instead of answering (:func:`engines.stub.plan.injected_fault`)."""

    def response(self, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        """A ``response`` object in vLLM's field order (the subset clients read)."""
        body = self.body
        cap = body.get("max_output_tokens")
        return {
            "id": self.id,
            "created_at": self.created,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata"),
            "model": self.model,
            "object": "response",
            "output": output,
            "parallel_tool_calls": True,
            "temperature": body.get("temperature") or 1.0,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": body.get("top_p") or 1.0,
            "background": bool(body.get("background")),
            "max_output_tokens": cap if isinstance(cap, int) else 4096,
            "max_tool_calls": None,
            "previous_response_id": body.get("previous_response_id"),
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "status": status,
            "text": None,
            "top_logprobs": 0,
            "truncation": "disabled",
            "usage": usage,
            "user": body.get("user"),
        }

    def part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": "".join(self.texts),
            "annotations": [],
            "logprobs": None,
        }

    def message(self, status: str, content: list[Any]) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "content": content,
            "role": "assistant",
            "status": status,
            "type": "message",
        }

    def usage(self) -> dict[str, Any]:
        output = len(self.texts)
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + output,
        }

    def final(self) -> dict[str, Any]:
        return self.response("completed", [self.message("completed", [self.part()])], self.usage())


async def _send_events(answer: _Answer, send: Send) -> str:
    """vLLM's event sequence for one text message; one body message per delta."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    async def chunk(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    started = answer.response("in_progress", [], None)
    where = {"output_index": 0, "item_id": answer.item_id, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await chunk(
        event("response.created", response=started)
        + event("response.in_progress", response=started)
        + event(
            "response.output_item.added",
            output_index=0,
            item=answer.message("in_progress", []),
        )
        + event("response.content_part.added", part=empty_part, **where)
    )
    fault = answer.fault
    stop_after = fault.after if fault is not None else len(answer.texts)
    for step, text in enumerate(answer.texts[:stop_after]):
        if step and answer.itl_s > 0:
            await asyncio.sleep(answer.itl_s)
        await chunk(event("response.output_text.delta", delta=text, logprobs=[], **where))
    if fault is not None:  # unfinished: the server cuts the connection (or it hangs)
        if fault.kind == "hang":
            await wait_forever()
        return DROPPED
    part = answer.part()
    tail = (
        event("response.output_text.done", text=part["text"], logprobs=[], **where)
        + event("response.content_part.done", part=part, **where)
        + event(
            "response.output_item.done", output_index=0, item=answer.message("completed", [part])
        )
        + event("response.completed", response=answer.final())
    )
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    return "completed"
