"""A zero-delay OpenAI-shaped upstream for benchmarks: the least an engine can cost.

``python -m benchmarks.bare_upstream --port P [--model M ...]`` serves what a gateway
asks of a vLLM engine (``GET /health``, ``/v1/models``, ``/metrics``) and answers
``POST /v1/chat/completions`` and ``/v1/completions`` on uvloop with httptools'
request parser on asyncio protocols, keep-alive, answers in request order.

Why not :mod:`engines.stub`: the stub is a full fake engine (faults, extras, every
vLLM route) on uvicorn and costs 100-180 µs of CPU per request. Issue #16 measures
the gateway with a zero-delay upstream sharing a core with ``wrk``, so every µs the
upstream spends is taken from the load generator. Here a plain non-streaming
request costs one JSON parse and one write of bytes built at start-up.

Two paths:

- **fixed**: a non-streaming request naming a served model, with none of
  :data:`SHAPING_FIELDS`, gets the same answer every time (the stub's answer to
  "Say hello.", ``usage`` included, so it is sized like the stub's);
- **planned**: anything else (streams, ``"stub"`` timing, ``n``, ``max_tokens``...)
  goes through the stub's own planner and byte builders (:mod:`engines.stub.plan`,
  :mod:`engines.stub.output`), so shapes and the ``"stub"`` field's ``tokens`` /
  ``ttft_ms`` / ``itl_ms`` mean what they mean to the stub. Streams are chunked SSE
  as vLLM sends them, with a usage chunk when ``stream_options.include_usage``, then
  ``data: [DONE]``. Faults (``"stub": {"fault": ...}``) are refused: use the stub.

``GET /stub/stats`` reports ``requests`` and ``in_flight`` (streams and delayed
answers being sent), which :mod:`benchmarks.stream_hold` watches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson
import uvloop

from engines.stub.output import (
    DONE_EVENT,
    StreamEvents,
    error_body,
    metrics_text,
    models_body,
    new_id,
    response_body,
    token_texts,
)
from engines.stub.plan import Plan, RequestError, StubConfig, plan_request

#: Request fields that change what the stub would answer: their presence leaves the fixed path.
SHAPING_FIELDS = frozenset(
    {"stream", "stub", "n", "max_tokens", "max_completion_tokens", "logprobs", "tools",
     "tool_choice", "return_token_ids"}
)  # fmt: skip
COMPLETION_PATHS = {b"/v1/chat/completions": True, b"/v1/completions": False}  # path → chat
FIXED_PROMPT = "Say hello."
JSON = b"application/json"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


def http_response(status: int, content_type: bytes | None, body: bytes) -> bytes:
    """A whole HTTP/1.1 response with a Content-Length (the connection stays reusable)."""
    reason = _REASONS.get(status, b"Error")
    head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n" % (status, reason, len(body))
    if content_type is not None:
        head += b"content-type: " + content_type + b"\r\n"
    return head + b"\r\n" + body


def sse_chunk(data: bytes) -> bytes:
    """One piece of a chunked body (empty data would end the body, so it is skipped)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _error(error: RequestError) -> bytes:
    return http_response(error.status, JSON, error_body(error))


@dataclass(slots=True)
class Counters:
    """What reached this upstream: completion requests, and answers still being sent."""

    requests: int = 0
    in_flight: int = 0


class Answers:
    """Every route's answer: fixed bytes built once at start-up, or a :class:`Plan`."""

    def __init__(self, config: StubConfig, counters: Counters) -> None:
        self._config = config
        self._counters = counters
        created = int(time.time())
        self._fixed: dict[tuple[str, bool], bytes] = {}
        for model in config.models:
            for chat in (True, False):
                ask: dict[str, Any] = {"model": model}
                if chat:
                    ask["messages"] = [{"role": "user", "content": FIXED_PROMPT}]
                else:
                    ask["prompt"] = FIXED_PROMPT
                plan = plan_request(config, ask, chat=chat)
                body = response_body(plan, new_id(chat), created)
                self._fixed[model, chat] = http_response(200, JSON, body)
        self._gets = {
            b"/health": http_response(200, None, b""),
            b"/v1/models": http_response(200, JSON, models_body(config.models, created)),
            b"/metrics": http_response(200, b"text/plain; version=0.0.4",
                                       metrics_text({}, config.models)),
        }  # fmt: skip

    def answer(self, method: bytes, url: bytes, body: bytes) -> bytes | Plan:
        """The bytes to send now, or the plan of an answer that takes time to send."""
        path = url.split(b"?", 1)[0]
        if method == b"GET":
            if path == b"/stub/stats":
                counters = self._counters
                stats = {"requests": counters.requests, "in_flight": counters.in_flight,
                         "pid": os.getpid()}  # fmt: skip
                return http_response(200, JSON, orjson.dumps(stats))
            fixed = self._gets.get(path)
            if fixed is not None:
                return fixed
        chat = COMPLETION_PATHS.get(path)
        if method != b"POST" or chat is None:
            route = f"{method.decode('latin-1')} {path.decode('latin-1')}"
            return _error(RequestError(404, f"No route for {route}."))
        self._counters.requests += 1
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(RequestError(400, "The request body is not valid JSON."))
        if isinstance(request, dict) and SHAPING_FIELDS.isdisjoint(request):
            model = request.get("model")
            fixed = self._fixed.get((model, chat)) if isinstance(model, str) else None
            if fixed is not None and ("messages" if chat else "prompt") in request:
                return fixed
        try:
            plan = plan_request(self._config, request, chat=chat)
        except RequestError as error:
            return _error(error)
        if plan.fault is not None:
            return _error(RequestError(400, "The bare upstream acts out no faults: use the stub."))
        return plan


async def send_planned(plan: Plan, transport: asyncio.Transport) -> None:
    """A stream (chunked SSE, paced by the plan's TTFT and gaps) or a delayed whole answer."""
    if not plan.stream:
        delay = plan.ttft_s + plan.itl_s * max(plan.completion_tokens - 1, 0)
        if delay > 0:
            await asyncio.sleep(delay)
        transport.write(http_response(200, JSON, response_body(plan, new_id(plan.chat),
                                                               int(time.time()))))  # fmt: skip
        return
    events = StreamEvents(plan, new_id(plan.chat), int(time.time()))
    choices = range(plan.n)
    texts = [token_texts(plan.seed, plan.completion_tokens, choice) for choice in choices]
    if plan.ttft_s > 0:
        await asyncio.sleep(plan.ttft_s)
    role = b"".join(events.role(choice) for choice in choices) if plan.chat else b""
    transport.write(_SSE_HEAD + sse_chunk(role))
    for step in range(plan.completion_tokens):
        if step > 0 and plan.itl_s > 0:
            await asyncio.sleep(plan.itl_s)
        transport.write(sse_chunk(b"".join(events.token(c, texts[c][step]) for c in choices)))
    tail = [events.finish(choice) for choice in choices]
    if plan.include_usage:
        tail.append(events.usage())
    tail.append(DONE_EVENT)
    transport.write(sse_chunk(b"".join(tail)) + b"0\r\n\r\n")


class Connection(asyncio.Protocol):
    """One client connection. Fixed answers are written as soon as their request is
    parsed; while a planned answer is being sent, later requests wait their turn."""

    def __init__(self, answers: Answers, counters: Counters) -> None:
        self._answers = answers
        self._counters = counters
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url: list[bytes] = []
        self._body: list[bytes] = []
        self._waiting: deque[tuple[bytes | Plan, bool]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(_error(RequestError(400, "Malformed HTTP request.")), keep_alive=False)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url, self._url = b"".join(self._url), []
        body, self._body = b"".join(self._body), []
        reply = self._answers.answer(self._parser.get_method(), url, body)
        keep_alive = self._parser.should_keep_alive()
        if self._sender is None and isinstance(reply, bytes):
            self._finish(reply, keep_alive)
            return
        self._waiting.append((reply, keep_alive))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_waiting())

    def _finish(self, reply: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply)
        if not keep_alive:
            transport.close()

    async def _send_waiting(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._waiting and not transport.is_closing():
                reply, keep_alive = self._waiting.popleft()
                if isinstance(reply, bytes):
                    self._finish(reply, keep_alive)
                    continue
                self._counters.in_flight += 1
                try:
                    await send_planned(reply, transport)
                finally:
                    self._counters.in_flight -= 1
                if not keep_alive:
                    transport.close()
        finally:
            self._sender = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting.clear()
        if self._sender is not None:
            self._sender.cancel()


async def serve(host: str, port: int, config: StubConfig) -> None:
    """Serve until cancelled (SIGTERM's default action ends the process)."""
    counters = Counters()
    answers = Answers(config, counters)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(answers, counters), host, port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="benchmarks.bare_upstream", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", help="a served model (repeatable)")
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per answer")
    args = parser.parse_args(argv)
    models = tuple(args.model or ["stub-model"])
    uvloop.run(serve(args.host, args.port, StubConfig(models=models, tokens=args.tokens)))


if __name__ == "__main__":
    main()
