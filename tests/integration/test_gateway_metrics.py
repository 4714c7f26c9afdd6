"""/metrics (on the operator listener) exposes the gateway's metrics and they move with
traffic."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "count me"}]


def _value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted((match.group(2) or "").split(",")))
        if found == wanted:
            return float(match.group(3))
    return 0.0


def test_metrics_move_with_traffic(gateway: Gateway) -> None:
    before = gateway.metrics()
    client = gateway.client()
    for _ in range(3):
        client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    list(client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, stream=True))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="dead-model", messages=MESSAGES)
    after = gateway.metrics()

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = {"model": STUB_MODEL, "endpoint": "chat_completions", "status": "200", "variant": ""}
    assert delta("vgate_requests_total", **ok) == 4
    assert (
        delta(
            "vgate_requests_total",
            model="dead-model",
            endpoint="chat_completions",
            status="503",
            variant="",
        )
        == 1
    )
    assert (
        delta(
            "vgate_request_duration_seconds_count",
            model=STUB_MODEL,
            endpoint="chat_completions",
            variant="",
        )
        == 4
    )
    assert (
        delta(
            "vgate_time_to_first_token_seconds_count",
            model=STUB_MODEL,
            endpoint="chat_completions",
            variant="",
        )
        == 1
    )
    assert delta("vgate_upstream_errors_total", model="dead-model", kind="connect") >= 1
    assert _value(after, "vgate_requests_in_flight", model=STUB_MODEL) == 0


def test_metrics_content_type(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.operator_url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE vgate_requests_total counter" in response.text
