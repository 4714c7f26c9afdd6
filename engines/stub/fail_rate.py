"""``--fail-rate R``: a stub engine whose completions fail with 500 in a share ``R`` of
requests, as an engine build with a bug would; the rollout controller's tests point
a canary at one.

Deterministic, so tests do not depend on luck: of every run of requests, request
``n`` (counted from 1 per engine, generation routes only) fails when ``floor(n*R)``
steps up, i.e. at R=0.25 every fourth request. The failure is vLLM's 500 body.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import orjson

from engines.stub.guard import GENERATION_PATHS, App, Receive, Scope, Send

_FAILURE = orjson.dumps(
    {
        "error": {
            "message": "stub engine: injected failure (--fail-rate)",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
)


class FailRate:
    """An ASGI wrapper failing ``rate`` of the generation requests with 500."""

    def __init__(self, app: App, rate: float) -> None:
        self._app = app
        self._rate = rate
        self._seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in GENERATION_PATHS
        ):
            self._seen += 1
            n = self._seen
            if math.floor(n * self._rate) > math.floor((n - 1) * self._rate):
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(_FAILURE)),
                ]
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": _FAILURE})
                return
        await self._app(scope, receive, send)


def add_fail_rate_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="share of completions answered 500 (0-1)"
    )


def with_fail_rate(args: argparse.Namespace, inner: Callable[[App], App]) -> Callable[[App], App]:
    """``inner``'s wrapping, then the failure share the command line asks for."""
    rate = float(args.fail_rate)
    if not 0.0 <= rate <= 1.0:
        raise SystemExit("--fail-rate must be between 0 and 1")

    def wrap(app: App) -> App:
        wrapped = inner(app)
        return FailRate(wrapped, rate) if rate > 0 else wrapped

    return wrap
