"""``server.operator_token``: the operator listener's read-only routes ask for it.

The operator listener (``server.admin_port``; ``deploy/`` binds it to 0.0.0.0) served
``/metrics``, ``/sd/engines``, the detailed ``/ready`` and ``/status`` to whoever
reached it: engine addresses, key names and what each consumes, guarded by network
policy alone. With a token set (here from ``VGATE_SERVER__OPERATOR_TOKEN``, as
``deploy/`` sets it), a real ``vgate serve`` answers those routes only to
``Authorization: Bearer <token>`` or the admin key, and 401 in OpenAI's format
otherwise; ``/health`` stays open; ``/admin/*`` still takes the admin key only; and
the token never reaches the log, even at debug level.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.metrics_text import metric_sum
from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Stub

TOKEN = "operator-token-0123456789abcdef"
ADMIN_KEY = "admin-operator-token-0123456789"
KEY = "sk-operator-token-client-012345"
GUARDED = ("/metrics", "/sd/engines", "/ready", "/status", "/status/events")


class Listener:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log


@pytest.fixture(scope="module")
def listener(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    directory = tmp_path_factory.mktemp("operator-token")
    port, admin = free_port(), free_port()
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": {"enabled": True, "admin_key": ADMIN_KEY, "keys": [{"name": "team", "key": KEY}]},
        "server": {"port": port, "admin_port": admin, "log_level": "debug"},
    }
    path = directory / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    log = directory / "gateway.log"
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    argv = ["sh", "-c", 'exec "$@" >"$0" 2>&1', str(log), *command]
    env = {"VGATE_SERVER__OPERATOR_TOKEN": TOKEN}
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30, env=env):
        yield Listener(f"http://127.0.0.1:{admin}", log)


def _get(listener: Listener, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with httpx.Client(timeout=10) as client:
        if path == "/status/events":  # a stream: its head is enough
            with client.stream("GET", f"{listener.url}{path}", headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                return response
        return client.get(f"{listener.url}{path}", headers=headers)


@pytest.mark.parametrize("path", GUARDED)
def test_without_the_token_the_listener_answers_401(listener: Listener, path: str) -> None:
    for token in (None, "not-the-operator-token-0123", KEY):
        response = _get(listener, path, token)
        assert response.status_code == 401, (path, token)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}
        assert "operator_token" in error["message"]


@pytest.mark.parametrize("path", GUARDED)
def test_the_token_or_the_admin_key_opens_them(listener: Listener, path: str) -> None:
    for token in (TOKEN, ADMIN_KEY):
        assert _get(listener, path, token).status_code == 200, (path, token)


def test_health_stays_open_and_admin_wants_the_admin_key(listener: Listener) -> None:
    assert _get(listener, "/health").status_code == 200
    assert _get(listener, "/admin/keys", TOKEN).status_code == 401  # reads, never changes
    assert _get(listener, "/admin/keys", ADMIN_KEY).status_code == 200


def test_refusals_are_counted_and_the_token_is_never_logged(listener: Listener) -> None:
    before = metric_sum(
        _get(listener, "/metrics", TOKEN).text,
        "vgate_auth_failures_total",
        reason="invalid_operator_token",
    )
    assert _get(listener, "/metrics", "wrong-token-0123456789abcdef").status_code == 401
    after = metric_sum(
        _get(listener, "/metrics", TOKEN).text,
        "vgate_auth_failures_total",
        reason="invalid_operator_token",
    )
    assert after == before + 1
    log = listener.log.read_text()
    assert log.strip(), "the gateway wrote no log"
    assert TOKEN not in log
