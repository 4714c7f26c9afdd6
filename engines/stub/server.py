"""A deterministic OpenAI-compatible fake engine, for tests, benchmarks and client work.

It speaks vLLM's OpenAI HTTP surface as a raw ASGI app (no framework: it must
never be the bottleneck of a benchmark) and can act out an engine's failures:
error statuses, streams cut mid-way, requests that never answer. Behaviour is
set at start-up (`StubConfig`) and per request by a ``"stub"`` object in the
body, which a gateway forwards untouched. Counters at ``GET /stub/stats`` show
what reached the stub and how each stream ended.

Run it with ``python -m engines.stub --port 9001``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from engines.stub.asgi import (
    JSON,
    Message,
    Receive,
    Scope,
    Send,
    act_out,
    read_body,
    send_bytes,
    send_stream,
    send_whole,
    until_disconnect,
)
from engines.stub.embeddings import PATH as EMBEDDINGS_PATH
from engines.stub.embeddings import EmbeddingsRoute
from engines.stub.extras import ExtraRoutes
from engines.stub.fail_rate import add_fail_rate_flag, with_fail_rate
from engines.stub.guard import App, add_guard_flags, guard_from
from engines.stub.output import error_body, metrics_text, models_body
from engines.stub.plan import Plan, RequestError, StubConfig, plan_request
from engines.stub.priorities import PriorityLog
from engines.stub.responses import PATH as RESPONSES_PATH
from engines.stub.responses import ResponsesStub
from engines.stub.salts import check_cache_salt
from engines.stub.traceparents import TraceparentLog

__all__ = ["StubApp", "StubConfig", "StubStats", "create_stub_app", "serve_stub", "stub_main"]

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class RecordedRequest:
    """The last completion request as received; decoded only when asked for."""

    path: str
    headers: list[tuple[bytes, bytes]]
    body: Any


@dataclass(slots=True)
class StubStats:
    """Counters of one app instance.

    Every stream that started ends as exactly one of completed, cancelled (the
    client left) or dropped (an injected fault). ``requests_cancelled`` counts
    every completion request, streaming or not, whose client left first.
    """

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    streams_dropped: int = 0
    requests_cancelled: int = 0
    in_flight: int = 0
    running: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)  # model → [prompt, generated]
    last_request: RecordedRequest | None = None

    def reset(self) -> None:
        """Zero the counters; requests in progress still count as in flight."""
        self.requests = self.streams_started = self.streams_completed = 0
        self.streams_cancelled = self.streams_dropped = self.requests_cancelled = 0
        self.last_request = None

    def snapshot(self) -> dict[str, Any]:
        """The counters as the JSON object served at ``GET /stub/stats``."""
        last = self.last_request
        return {
            "requests": self.requests,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
            "streams_dropped": self.streams_dropped,
            "requests_cancelled": self.requests_cancelled,
            "in_flight": self.in_flight,
            "pid": os.getpid(),
            "last_request": None
            if last is None
            else {
                "path": last.path,
                "headers": {
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in last.headers
                },
                "body": last.body,
            },
        }


class StubApp:
    """The ASGI application: routes, completion handling and the counters."""

    def __init__(self, config: StubConfig, adapters: dict[str, str] | None = None) -> None:
        """``adapters``: LoRA adapter name → base model, listed with ``parent``."""
        self.config = config
        self.stats = StubStats()
        self.priorities = PriorityLog(config.scheduling_policy)
        self.traceparents = TraceparentLog()
        self._models_body = models_body(config.models, int(time.time()))
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._text},
            "/v1/models": {"GET": self._models},
            "/health": {"GET": self._health},
            "/metrics": {"GET": self._metrics},
            "/stub/stats": {"GET": self._stats},
            "/stub/reset": {"POST": self._reset},
            **self.priorities.routes(),
            **self.traceparents.routes(),
            **ExtraRoutes(config.models, adapters or {}, self._record).routes(),
            EMBEDDINGS_PATH: {"POST": EmbeddingsRoute(config, self.stats).handle},
            RESPONSES_PATH: {"POST": ResponsesStub(config, self.stats).handle},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch an HTTP request by path and method; answer the lifespan protocol."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        methods = self._routes.get(scope["path"])
        if methods is None:
            await _send_error(send, RequestError(404, f"Route {scope['path']} not found."))
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(methods).encode()
            error = RequestError(405, f"Method {scope['method']} not allowed.")
            await send_bytes(send, 405, error_body(error), JSON, [(b"allow", allow)])
            return
        await handler(scope, receive, send)

    def _record(self, scope: Scope, body: Any) -> None:
        """Count a request of the extra routes and keep it as ``last_request``."""
        self.stats.requests += 1
        self.stats.last_request = RecordedRequest(scope["path"], scope["headers"], body)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, chat=True)

    async def _text(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, chat=False)

    async def _completion(self, scope: Scope, receive: Receive, send: Send, *, chat: bool) -> None:
        """Count the request as in flight for exactly as long as it is handled."""
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        try:
            await self._complete(scope, receive, send, chat)
        except OSError:  # a send after the client left, on servers that raise
            stats.requests_cancelled += 1
        finally:
            stats.in_flight -= 1

    async def _complete(self, scope: Scope, receive: Receive, send: Send, chat: bool) -> None:
        """Read, record, validate and answer one completion request."""
        raw = await read_body(receive)
        if raw is None:
            self.stats.requests_cancelled += 1
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.stats.last_request = RecordedRequest(scope["path"], scope["headers"], body)
        self.traceparents.note(scope["headers"])
        try:
            if body is None:
                raise RequestError(400, "The request body is not valid JSON.")
            invalid = self.priorities.note(body)
            if invalid is not None:
                raise RequestError(400, invalid, param="priority")
            if isinstance(body, dict):
                check_cache_salt(body)
            plan = plan_request(self.config, body, chat=chat)
        except RequestError as error:
            await _send_error(send, error)
            return
        running = self.stats.running
        running[plan.model] = running.get(plan.model, 0) + 1
        counted = self.stats.tokens.setdefault(plan.model, [0, 0])
        counted[0] += plan.prompt_tokens  # prefilled on arrival
        try:
            # Generated tokens count once answered (vLLM counts them as it generates): a
            # hung engine's counter stands still, which the supervisor's stuck check reads.
            if await self._answer(plan, receive, send):
                counted[1] += plan.completion_tokens * plan.n
        finally:
            running[plan.model] -= 1

    async def _answer(self, plan: Plan, receive: Receive, send: Send) -> bool:
        """Act out the plan, watching for the client leaving wherever time passes; True
        when the answer was sent in full."""
        stats = self.stats
        stream = (lambda: send_stream(plan, send)) if plan.stream else None
        completed = stats.streams_completed
        if await act_out(stats, plan.fault, stream, receive):
            # A hang, or a stream: in full when one completed meanwhile (concurrent
            # streams may blur which one; the counter is for tests, not accounting).
            return stats.streams_completed > completed
        if plan.ttft_s > 0 or plan.itl_s > 0:
            if await until_disconnect(send_whole(plan, send), receive) is None:
                stats.requests_cancelled += 1
                return False
        else:
            await send_whole(plan, send)
        return True

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._models_body, JSON)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b"", None)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = metrics_text(self.stats.running, self.config.models, self.stats.tokens)
        await send_bytes(send, 200, body, _PROMETHEUS)

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, orjson.dumps(self.stats.snapshot()), JSON)

    async def _reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.reset()
        await send_bytes(send, 200, orjson.dumps(self.stats.snapshot()), JSON)


async def _send_error(send: Send, error: RequestError) -> None:
    """An OpenAI error body with the error's status."""
    await send_bytes(send, error.status, error_body(error), JSON)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge start-up and shut-down; the stub holds no resources."""
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_stub_app(config: StubConfig, adapters: dict[str, str] | None = None) -> StubApp:
    """A fresh stub ASGI app with its own counters."""
    return StubApp(config, adapters)


class _UnfinishedResponseFilter(logging.Filter):
    """Hide uvicorn's complaint about responses the stub leaves unfinished on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


def serve_stub(
    config: StubConfig,
    host: str,
    port: int,
    wrap: Callable[[App], App] | None = None,
    adapters: dict[str, str] | None = None,
) -> None:
    """Serve a stub app (wrapped by ``wrap``, e.g. the api key guard) with uvicorn
    (httptools, uvloop) until interrupted."""
    app: App = create_stub_app(config, adapters)
    server_config = uvicorn.Config(
        wrap(app) if wrap is not None else app,
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    logging.getLogger("uvicorn.error").addFilter(_UnfinishedResponseFilter())
    uvicorn.Server(server_config).run()


def _parser() -> argparse.ArgumentParser:
    """The command line of ``python -m engines.stub``."""
    parser = argparse.ArgumentParser(
        prog="engines.stub.server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", help="a served model name (repeatable)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="delay between tokens")
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per answer")
    parser.add_argument(
        "--fail-status", type=int, help="answer every completion and response with it"
    )
    parser.add_argument("--drop-after", type=int, help="cut streams after N content chunks")
    parser.add_argument("--hang", action="store_true", help="never answer completions or responses")
    parser.add_argument(
        "--lora", action="append", default=[], help="adapter NAME=BASE (repeatable)"
    )
    parser.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs")
    parser.add_argument(
        "--prompt-tokens",
        choices=("words", "chars"),
        default="words",
        help="usage.prompt_tokens of a text prompt: a token per word, or per character",
    )
    add_guard_flags(parser)
    add_fail_rate_flag(parser)
    return parser


def stub_main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and serve a stub until interrupted; returns the exit status."""
    args = _parser().parse_args(argv)
    adapters = dict(spec.split("=", 1) for spec in args.lora)
    config = StubConfig(
        models=(*(args.model or StubConfig().models), *adapters),
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        tokens=args.tokens,
        fail_status=args.fail_status,
        drop_after=args.drop_after,
        hang=args.hang,
        scheduling_policy=args.scheduling_policy,
        prompt_tokens=args.prompt_tokens,
    )
    serve_stub(config, args.host, args.port, with_fail_rate(args, guard_from(args)), adapters)
    return 0


if __name__ == "__main__":
    raise SystemExit(stub_main())
