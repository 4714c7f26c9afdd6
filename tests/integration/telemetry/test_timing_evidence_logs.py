"""Server-Timing, routing evidence and the JSON request log (issue #18, acceptance 2),
against real stub engines over HTTP."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest

from gateway.observability.logs import JsonFormatter
from tests.integration.conftest import STUB_MODEL
from tests.integration.telemetry.conftest import ADMIN, KEY, InProcessGateway, wait_for

# -- Server-Timing ---------------------------------------------------------------------


def timing(headers: httpx.Headers) -> dict[str, float]:
    value = headers["server-timing"]
    entries = [part.strip().split(";dur=") for part in value.split(",")]
    return {name: float(duration) for name, duration in entries}


def test_every_completion_answer_carries_server_timing(untraced: InProcessGateway) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    chat = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "t"}], "max_tokens": 4}
    url = untraced.url
    with httpx.Client(headers=auth, timeout=30) as http:
        json_answer = http.post(f"{url}/v1/chat/completions", json={**chat, "temperature": 1})
        with http.stream(
            "POST", f"{url}/v1/chat/completions", json={**chat, "stream": True, "temperature": 1}
        ) as streamed:
            streamed.read()
        deterministic = {**chat, "temperature": 0, "messages": [{"role": "user", "content": "h"}]}
        miss = http.post(f"{url}/v1/chat/completions", json=deterministic)
        hit = http.post(f"{url}/v1/chat/completions", json=deterministic)
        text = http.post(
            f"{url}/v1/completions", json={"model": STUB_MODEL, "prompt": "p", "max_tokens": 2}
        )
        embedded = http.post(f"{url}/v1/embeddings", json={"model": STUB_MODEL, "input": "e"})
        responded = http.post(f"{url}/v1/responses", json={"model": STUB_MODEL, "input": "r"})
        unknown = http.post(f"{url}/v1/chat/completions", json={**chat, "model": "nope"})
    for answer in (json_answer, streamed, miss, text, embedded, responded):
        assert answer.status_code == 200, answer.text
        stages = timing(answer.headers)
        assert list(stages) == ["auth", "limit", "cache", "queue", "upstream"]
        assert all(0 <= d < 30_000 for d in stages.values())
        assert stages["upstream"] > 0  # the engine took some time
    assert hit.headers["x-cache"] == "HIT"
    assert list(timing(hit.headers)) == ["auth", "limit", "cache"]  # it never went upstream
    assert unknown.status_code == 404
    assert list(timing(unknown.headers)) == ["auth", "limit"]


# -- routing evidence ------------------------------------------------------------------


def test_the_evidence_is_given_only_with_the_admin_key(untraced: InProcessGateway) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    body = {"model": STUB_MODEL, "prompt": "why here", "max_tokens": 4, "temperature": 1}
    url = f"{untraced.url}/v1/completions"
    shown = httpx.post(url, headers={**auth, "x-vgate-explain": ADMIN}, json=body)
    assert shown.status_code == 200
    raw = shown.headers["x-vgate-explain"]
    assert raw.isascii() and len(raw) <= 4096
    evidence = json.loads(raw)
    assert evidence["policy"] == "least_outstanding"
    assert len(evidence["candidates"]) == 2
    assert {"engine", "healthy", "in_flight", "waiting", "kv_cache_usage", "load"} <= set(
        evidence["candidates"][0]
    )
    assert evidence["attempts"][-1]["status"] == 200 and evidence["attempts"][-1]["failure"] is None
    assert evidence["cache"]["status"] == "BYPASS"  # temperature 1 is not cached
    assert "x-ratelimit-remaining-requests" in evidence["limits"]
    assert evidence["affinity"]["policy_uses_affinity"] is False
    assert "http" not in raw  # engine ids, never URLs

    for wrong in ("1", ADMIN + "x", KEY, ""):
        hidden = httpx.post(url, headers={**auth, "x-vgate-explain": wrong}, json=body)
        assert hidden.status_code == 200 and "x-vgate-explain" not in hidden.headers
    plain = httpx.post(url, headers=auth, json=body)
    assert "x-vgate-explain" not in plain.headers


def test_the_operator_asks_with_explain_1_and_the_admin_key_as_bearer(
    untraced: InProcessGateway,
) -> None:
    body = {"model": STUB_MODEL, "prompt": "why here", "max_tokens": 4, "temperature": 1}
    url = f"{untraced.url}/v1/completions"
    admin = {"authorization": f"Bearer {ADMIN}"}
    shown = httpx.post(url, headers={**admin, "x-vgate-explain": "1"}, json=body)
    assert shown.status_code == 200, shown.text
    assert json.loads(shown.headers["x-vgate-explain"])["attempts"][-1]["status"] == 200
    # The admin key is no client key otherwise, and "1" proves nothing with another key.
    assert httpx.post(url, headers=admin, json=body).status_code == 401
    for wrong in (f"Bearer {ADMIN}x", f"Bearer {KEY}", f"Basic {ADMIN}", ADMIN):
        asked = httpx.post(url, headers={"authorization": wrong, "x-vgate-explain": "1"}, json=body)
        assert "x-vgate-explain" not in asked.headers, wrong


def test_a_stream_ends_with_the_evidence_as_a_comment(untraced: InProcessGateway) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    body = {"model": STUB_MODEL, "prompt": "p", "max_tokens": 4, "stream": True, "temperature": 1}
    url = f"{untraced.url}/v1/completions"
    with httpx.stream("POST", url, headers={**headers, "x-vgate-explain": ADMIN}, json=body) as r:
        text = r.read().decode()
    comment = [line for line in text.splitlines() if line.startswith(": vgate-explain ")]
    assert len(comment) == 1 and "x-vgate-explain" not in r.headers
    assert text.rstrip().endswith(comment[0])  # after the last event
    assert json.loads(comment[0].removeprefix(": vgate-explain "))["attempts"]
    with httpx.stream("POST", url, headers={**headers, "x-vgate-explain": "1"}, json=body) as r:
        assert "vgate-explain" not in r.read().decode()
    # The SDK reads such a stream as usual.
    client = openai.OpenAI(
        base_url=f"{untraced.url}/v1",
        api_key=KEY,
        max_retries=0,
        default_headers={"x-vgate-explain": ADMIN},
    )
    chunks = list(
        client.completions.create(model=STUB_MODEL, prompt="p", max_tokens=4, stream=True)
    )
    assert chunks


# -- the JSON request log --------------------------------------------------------------


def test_text_logs_have_no_request_lines(
    untraced: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vgate.request")
    answer = httpx.post(
        f"{untraced.url}/v1/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": STUB_MODEL, "prompt": "quiet", "max_tokens": 2, "temperature": 1},
    )
    assert answer.status_code == 200  # a JSON answer's request closed before it was sent
    assert not [r for r in caplog.records if r.name == "vgate.request"]


def test_json_log_lines_name_the_request(
    logged: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vgate.request")
    answer = httpx.post(
        f"{logged.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "log-me-1"},
        json={
            "model": STUB_MODEL,
            "messages": [{"role": "user", "content": "l"}],
            "temperature": 1,
        },
    )
    assert answer.status_code == 200

    def line() -> dict[str, Any] | None:
        for record in caplog.records:
            if record.name == "vgate.request":
                parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
                return parsed
        return None

    fields = wait_for(line, "the request's log line")
    assert fields["logger"] == "vgate.request" and fields["level"] == "info"
    assert fields["request_id"] == answer.headers["x-request-id"]
    assert fields["key"] == "team-a" and KEY not in json.dumps(fields)
    assert (fields["model"], fields["variant"], fields["status"]) == (STUB_MODEL, None, 200)
    assert fields["engine"] and fields["route"] == "chat_completions"
    assert fields["input_tokens"] > 0 and fields["output_tokens"] > 0
    assert {"total", "auth", "limit", "cache", "queue", "upstream"} <= set(fields["timings_ms"])
