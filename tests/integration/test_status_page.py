"""The live status page over HTTP: where it is served and behind what, what its event
stream says (engines without credentials, per-model figures from real traffic, top
keys by name, rollouts' weights) and how many streams it keeps open."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.http.status_feed import MAX_STREAMS
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
ADMIN_KEY = "sk-status-admin-0123456789"
TPM_KEY = "sk-status-tpm-0123456789"
TPM_KEY_NAME = f"status-tpm-{RUN}"
STABLE, CANARY = "status-stable", "status-canary"
CREDENTIALS = "status-user:0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--ttft-ms", "20", "--itl-ms", "2")


def _config(engine: Stub, **server: Any) -> dict[str, Any]:
    parts = urlsplit(engine.url)
    with_credentials = f"{parts.scheme}://{CREDENTIALS}@{parts.netloc}"
    return {
        "models": [
            {"name": STUB_MODEL, "endpoints": [with_credentials]},
            {"name": STABLE, "endpoints": [engine.url], "upstream_model": STUB_MODEL},
            {"name": CANARY, "endpoints": [engine.url], "upstream_model": STUB_MODEL},
        ],
        "rollouts": [
            {
                "model": "status-rollout",
                "variants": [
                    {"model": STABLE, "weight": 90},
                    {"model": CANARY, "weight": 10, "canary": True},
                ],
            }
        ],
        "auth": {
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [{"name": TPM_KEY_NAME, "key": TPM_KEY, "tpm": 10_000_000}],
        },
        "cache": {"enabled": True, "namespace": f"status-{RUN}"},
        "upstream": {"health_interval_s": 0.5, "metrics_interval_s": 0.5},
        "server": server,
    }


@pytest.fixture(scope="module")
def operated(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """An operator listener (conftest gives it a port)."""
    yield from start_gateway(_config(engine), tmp_path_factory.mktemp("status"))


@pytest.fixture(scope="module")
def keyed(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """No operator listener: the page is on the public port, behind the admin key."""
    config = _config(engine, admin_port=None)
    yield from start_gateway(config, tmp_path_factory.mktemp("status-keyed"))


def _first_snapshot(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                snapshot: dict[str, Any] = orjson.loads(line[len("data: ") :])
                return snapshot
    raise AssertionError("the stream ended without a snapshot")


def _wait_for_snapshot(
    gateway: Gateway, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = _first_snapshot(f"{gateway.operator_url}/status/events")
        if condition(snapshot):
            return snapshot
        assert time.monotonic() < deadline, f"no snapshot matched; last: {snapshot}"
        time.sleep(0.2)


def _model(snapshot: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in snapshot["models"] if m["model"] == name), None)


def test_the_page_is_one_self_contained_file(operated: Gateway) -> None:
    response = httpx.get(f"{operated.operator_url}/status")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'id="engines"' in html and 'id="rate-chart"' in html
    assert "uPlot" in html  # inlined, not fetched
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no CDN
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert len(scripts) == 2
    assert csp.count("'sha256-") == len(scripts)  # exactly these inline scripts may run


def test_snapshot_shows_engines_without_credentials(operated: Gateway) -> None:
    snapshot = _first_snapshot(f"{operated.operator_url}/status/events")
    raw = orjson.dumps(snapshot).decode()
    assert CREDENTIALS not in raw and "0123456789" not in raw
    engines = snapshot["engines"]
    assert len(engines) == 2  # the stub with credentials in its URL, and without
    served: dict[str, str | None] = {}
    for engine in engines:
        assert re.fullmatch(r"[0-9a-f]{8}", engine["id"])
        assert "@" not in engine["url"]
        served |= {m["model"]: m["rollout"] for m in engine["models"]}
        assert engine["state"] == "healthy"
        for field in ("in_flight", "running", "waiting", "kv_cache_usage", "restarts", "sent"):
            assert isinstance(engine[field], int | float), field
    assert served == {STUB_MODEL: None, STABLE: "status-rollout", CANARY: "status-rollout"}


def test_snapshot_reflects_traffic_keys_and_rollouts(operated: Gateway) -> None:
    client = openai.OpenAI(base_url=operated.base_url, api_key=TPM_KEY, max_retries=0)
    prompt: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"status {RUN}"}]
    for _ in range(3):  # streamed: TTFT and ITL; the same prompt twice more: cache hits
        for _chunk in client.chat.completions.create(
            model=STUB_MODEL, messages=prompt, stream=True, temperature=0
        ):
            pass
    client.chat.completions.create(model="status-rollout", messages=prompt, max_tokens=4)

    def traffic_seen(snapshot: dict[str, Any]) -> bool:
        model = _model(snapshot, STUB_MODEL)
        return model is not None and model["requests"] >= 3 and bool(snapshot["keys"])

    snapshot = _wait_for_snapshot(operated, traffic_seen)
    model = _model(snapshot, STUB_MODEL)
    assert model is not None
    assert model["requests_per_s"] > 0
    assert model["error_rate"] == 0
    assert model["ttft_p50_s"] is not None and 0.015 <= model["ttft_p95_s"] <= 5
    assert model["itl_p50_s"] is not None and model["itl_p95_s"] >= model["itl_p50_s"]
    assert model["cache_hit_ratio"] == pytest.approx(2 / 3)
    assert sum(model["rate_series"]) >= 3
    assert any(v is not None for v in model["ttft_p95_series"])
    # a rollout's request is counted under the variant that served it
    assert any(_model(snapshot, v) is not None for v in (STABLE, CANARY))
    assert snapshot["keys"][0]["name"] == TPM_KEY_NAME and snapshot["keys"][0]["tokens"] > 0
    assert TPM_KEY not in orjson.dumps(snapshot).decode()
    (rollout,) = snapshot["rollouts"]
    assert rollout["model"] == "status-rollout"
    assert rollout["live"]  # read from the rollout controller, not the configuration
    weights = {v["model"]: (v["weight"], v["canary"]) for v in rollout["variants"]}
    assert weights == {STABLE: (90, False), CANARY: (10, True)}


def test_snapshots_arrive_every_second(operated: Gateway) -> None:
    times = []
    with httpx.stream("GET", f"{operated.operator_url}/status/events", timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                times.append(orjson.loads(line[len("data: ") :])["time"])
                if len(times) == 3:
                    break
    assert 1.5 <= times[-1] - times[0] <= 6  # generous: a busy machine delays frames


def test_streams_beyond_the_cap_get_503_and_a_closed_one_frees_its_place(
    operated: Gateway,
) -> None:
    url = f"{operated.operator_url}/status/events"
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=10))
        streams = []

        def open_one() -> httpx.Response:
            response = stack.enter_context(client.stream("GET", url))
            streams.append(response)
            return response

        for _ in range(MAX_STREAMS):
            assert open_one().status_code == 200
        refused = client.get(url)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "too_many_status_streams"
        streams[0].close()
        deadline = time.monotonic() + 10
        while True:  # the gateway notices the closed stream within a frame or two
            with client.stream("GET", url) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's place was never freed"
            time.sleep(0.1)


def test_without_a_listener_the_page_needs_the_admin_key(keyed: Gateway) -> None:
    for path in ("/status", "/status/events"):
        anonymous = httpx.get(f"{keyed.url}{path}")
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        client_key = httpx.get(f"{keyed.url}{path}", headers={"authorization": f"Bearer {TPM_KEY}"})
        assert client_key.status_code == 401, path
    bearer = {"authorization": f"Bearer {ADMIN_KEY}"}
    page = httpx.get(f"{keyed.url}/status", headers=bearer)
    assert page.status_code == 200 and 'id="engines"' in page.text
    assert _first_snapshot(f"{keyed.url}/status/events", bearer)["engines"]


def test_with_a_listener_the_public_port_has_no_page(operated: Gateway) -> None:
    bearer = {"authorization": f"Bearer {ADMIN_KEY}"}
    for path in ("/status", "/status/events"):
        assert httpx.get(f"{operated.url}{path}", headers=bearer).status_code == 404, path
