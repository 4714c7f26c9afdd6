"""Two start-up traits of a vLLM engine the stub can act out, around any stub app.

* ``--api-key KEY`` (or ``VLLM_API_KEY`` in its environment, as vLLM reads it): the
  paths vLLM guards (``/v1``, ``/v2``, ``/inference``, ``/cohere``) answer 401 with
  vLLM's body unless ``Authorization: Bearer KEY`` comes with them; ``/health``,
  ``/metrics`` and the stub's own ``/stub/*`` stay open, as in vLLM.
* ``--runner pooling``: the generation routes (completions, chat) answer 404 as on a
  vLLM pooling engine, which never registers them.

Managed stub engines get the supervisor's key through ``VLLM_API_KEY``, so tests can
show which key reaches an engine.
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY_ENV = "VLLM_API_KEY"
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses"})


class EngineGuard:
    """An ASGI wrapper: the api key check, then the pooling runner's missing routes."""

    def __init__(self, app: App, api_key: str | None, runner: str | None) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode() if api_key else None
        self._pooling = runner == "pooling"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if self._expected is not None and path.startswith(GUARDED_PREFIXES):
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, self._expected):
                    await _send_json(send, 401, {"error": "Unauthorized"})
                    return
            if self._pooling and path in GENERATION_PATHS:
                await _send_json(send, 404, {"detail": "Not Found"})
                return
        await self._app(scope, receive, send)


def add_guard_flags(parser: argparse.ArgumentParser) -> None:
    """``--api-key`` and ``--runner`` on the stub's command line."""
    parser.add_argument("--api-key", help=f"demand this Bearer key on /v1 (else ${KEY_ENV})")
    parser.add_argument("--runner", choices=("generate", "pooling"), help="pooling: no generation")


def guard_from(args: argparse.Namespace) -> Callable[[App], App]:
    """Wrap an app in the guard the command line (and ``VLLM_API_KEY``) asks for."""
    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    runner = args.runner

    def wrap(app: App) -> App:
        if api_key is None and runner is None:
            return app
        return EngineGuard(app, api_key, runner)

    return wrap


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
