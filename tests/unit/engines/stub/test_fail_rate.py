"""--fail-rate: exactly the asked share of generation requests answers vLLM's 500; other
routes are never failed."""

from __future__ import annotations

import argparse
from collections.abc import MutableMapping
from typing import Any

import pytest

from engines.stub.fail_rate import FailRate, add_fail_rate_flag, with_fail_rate


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def status_of(app: Any, path: str, method: str = "POST") -> int:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    return int(sent[0]["status"])


async def test_a_quarter_fail_deterministically() -> None:
    app = FailRate(ok_app, 0.25)
    statuses = [await status_of(app, "/v1/chat/completions") for _ in range(100)]
    assert statuses.count(500) == 25
    assert statuses[:4] == [200, 200, 200, 500]
    assert await status_of(app, "/health", "GET") == 200
    assert await status_of(app, "/v1/models", "GET") == 200


def test_flag_parsing() -> None:
    parser = argparse.ArgumentParser()
    add_fail_rate_flag(parser)
    assert with_fail_rate(parser.parse_args([]), lambda a: a)(ok_app) is ok_app
    wrapped = with_fail_rate(parser.parse_args(["--fail-rate", "0.5"]), lambda a: a)(ok_app)
    assert isinstance(wrapped, FailRate)
    with pytest.raises(SystemExit):
        with_fail_rate(parser.parse_args(["--fail-rate", "2"]), lambda a: a)
