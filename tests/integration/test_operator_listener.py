"""The operator surface, from outside: which routes answer on which port, to whom, and
that engine credentials never leave the gateway.

Real ``vgate serve`` / ``vgate up`` processes and the stub engine, over HTTP:

- with ``server.admin_port``: ``/metrics``, ``/sd/engines``, the detailed ``/ready`` and
  ``/admin/*`` answer on the operator listener and 404 on the public port, whose
  ``/ready`` says ready or not and nothing more; every worker serves the listener;
- without it: they need the admin key on the public port (403 when none is set), except
  ``/metrics`` with ``server.public_metrics: true``;
- an engine configured as ``http://user:password@host:port`` is reached with those
  credentials, and neither they nor that URL appear in any answer, header, metric,
  log line or CLI output; ``x-vgate-engine`` is absent unless ``server.debug_headers``,
  and then an id.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.pool.display import engine_id
from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

KEY = "sk-operator-test-0123456789"
ADMIN_KEY = "admin-operator-0123456789abcdef"
USER, PASSWORD = "vgate-user", "s3cret-passw0rd"
OPERATOR_PATHS = ("/metrics", "/sd/engines", "/admin/keys")
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _auth(**extra: Any) -> dict[str, Any]:
    return {"enabled": True, "keys": [{"name": "team", "key": KEY}], **extra}


def _code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def operated(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Auth and the admin API on, and an operator listener (conftest gives it a port)."""
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": _auth(admin_key=ADMIN_KEY),
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("operated"))


@pytest.fixture(scope="module")
def keyed(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """No operator listener: operator routes on the public port, behind the admin key."""
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": _auth(admin_key=ADMIN_KEY),
        "server": {"admin_port": None},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("keyed"))


@pytest.fixture(scope="module")
def open_metrics(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """No operator listener, no admin key, and ``public_metrics: true``."""
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "server": {"admin_port": None, "public_metrics": True},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("open-metrics"))


def test_operator_routes_answer_on_the_operator_listener_only(operated: Gateway) -> None:
    for path in OPERATOR_PATHS:
        public = httpx.get(f"{operated.url}{path}", headers=_bearer(ADMIN_KEY))
        assert public.status_code == 404, path
        assert _code(public) == "not_found"
    made = httpx.post(f"{operated.url}/admin/keys", json={"name": "x"}, headers=_bearer(ADMIN_KEY))
    assert made.status_code == 404

    operator = operated.operator_url
    metrics = httpx.get(f"{operator}/metrics")
    assert metrics.status_code == 200 and "# TYPE vgate_requests_total counter" in metrics.text
    targets = httpx.get(f"{operator}/sd/engines").json()
    engine = _healthy_engine(operated)
    assert engine is not None
    assert [t for group in targets for t in group["targets"]] == [engine.removeprefix("http://")]
    assert httpx.get(f"{operator}/health").status_code == 200
    keys = httpx.get(f"{operator}/admin/keys", headers=_bearer(ADMIN_KEY))
    assert keys.status_code == 200 and keys.json()["object"] == "list"
    refused = httpx.get(f"{operator}/admin/keys", headers=_bearer(KEY))
    assert refused.status_code == 401 and _code(refused) == "invalid_api_key"


def test_public_ready_says_ready_and_nothing_more(operated: Gateway) -> None:
    for headers in ({}, _bearer(KEY), _bearer(ADMIN_KEY)):
        ready = httpx.get(f"{operated.url}/ready", headers=headers)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}
    detail = operated.ready()
    assert detail["status"] == "ready"
    assert list(detail["engines"]) == [STUB_MODEL]
    assert "key-refresh" in detail["background"]


def test_no_engine_header_unless_asked_for(operated: Gateway) -> None:
    plain = httpx.post(f"{operated.base_url}/chat/completions", json=BODY, headers=_bearer(KEY))
    assert plain.status_code == 200
    assert "x-vgate-engine" not in plain.headers


def test_without_a_listener_operator_routes_need_the_admin_key(keyed: Gateway) -> None:
    for path in OPERATOR_PATHS:
        for headers in ({}, _bearer(KEY), _bearer("admin-but-not-the-right-one")):
            refused = httpx.get(f"{keyed.url}{path}", headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert _code(refused) == "invalid_api_key"
        assert httpx.get(f"{keyed.url}{path}", headers=_bearer(ADMIN_KEY)).status_code == 200
        # The scheme is read in any case, as for client keys (RFC 9110 §11.1).
        lower = {"Authorization": f"bearer  {ADMIN_KEY}"}
        assert httpx.get(f"{keyed.url}{path}", headers=lower).status_code == 200, path
    for headers in ({}, _bearer(KEY)):
        assert httpx.get(f"{keyed.url}/ready", headers=headers).json() == {"status": "ready"}
    detail = httpx.get(f"{keyed.url}/ready", headers=_bearer(ADMIN_KEY)).json()
    assert set(detail) == {
        "status",
        "redis",
        "rate_limiter",
        "known_engines",
        "engines",
        "failed_models",
        "background",
    }
    assert (detail["redis"], detail["known_engines"]) == ("not configured", 1)
    assert detail["failed_models"] == []
    assert httpx.get(f"{keyed.url}/health").status_code == 200


def test_public_metrics_opens_metrics_and_nothing_else(open_metrics: Gateway) -> None:
    metrics = httpx.get(f"{open_metrics.url}/metrics")
    assert metrics.status_code == 200 and "vgate_requests_total" in metrics.text
    for path in ("/sd/engines", "/admin/keys"):  # no admin key configured: off
        refused = httpx.get(f"{open_metrics.url}{path}")
        assert refused.status_code == 403, path
        assert _code(refused) == "admin_disabled"
    assert httpx.get(f"{open_metrics.url}/ready").json() == {"status": "ready"}


def _with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{PASSWORD}@", 1)


def _serve_logged(config: dict[str, Any], directory: Path, *flags: str) -> tuple[list[str], Path]:
    """``vgate serve`` argv whose stdout and stderr go to a log file, and that file."""
    path = directory / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    log = directory / "gateway.log"
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(path), *flags]
    return ["sh", "-c", 'exec "$@" >"$0" 2>&1', str(log), *command], log


def _everything_seen(gateway: Gateway) -> list[str]:
    """Every answer a client or an operator can get: bodies and headers."""
    seen: list[str] = []

    def record(response: httpx.Response) -> httpx.Response:
        seen.append(response.text)
        seen.extend(f"{name}: {value}" for name, value in response.headers.items())
        return response

    engine = engine_id(str(_healthy_engine(gateway)))
    with httpx.Client(timeout=15) as client:
        for path, body in (
            ("/chat/completions", BODY),
            ("/completions", {"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4}),
        ):
            url = f"{gateway.base_url}{path}"
            for stream in (False, True):
                answer = record(client.post(url, json=body | {"stream": stream}))
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-vgate-engine"] == engine  # an id, not a URL
                dead = record(
                    client.post(url, json=body | {"model": "dead-model", "stream": stream})
                )
                assert dead.status_code == 503 and _code(dead) == "engine_unavailable"
        record(client.post(f"{gateway.base_url}/chat/completions", json=BODY | {"model": "nope"}))
        record(client.get(f"{gateway.base_url}/models"))
        record(client.get(f"{gateway.url}/ready"))
        record(client.get(f"{gateway.url}/metrics"))
        record(client.get(f"{gateway.url}/nothing-here"))
        for path in ("/metrics", "/sd/engines", "/ready", "/admin/keys"):
            record(client.get(f"{gateway.operator_url}{path}"))
    return seen


def _healthy_engine(gateway: Gateway) -> str | None:
    """A healthy engine of the stub model, as the operator's /ready shows it."""
    engines = gateway.ready()["engines"].get(STUB_MODEL, {})
    return next((str(url) for url, ok in engines.items() if ok), None)


def _assert_no_credentials(text: str, secret_urls: list[str]) -> None:
    assert PASSWORD not in text
    assert f"{USER}:" not in text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text  # basic auth
    for url in secret_urls:
        assert url not in text


def test_engine_credentials_never_leave_the_gateway(
    stub: Stub, dead_url: str, tmp_path: Path
) -> None:
    secret_urls = [_with_credentials(stub.url), _with_credentials(dead_url)]
    port, admin = free_port(), free_port()
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [secret_urls[0]]},
            {"name": "dead-model", "endpoints": [secret_urls[1]]},
        ],
        "server": {"debug_headers": True, "log_level": "debug"},
        "upstream": {"health_interval_s": 0.2, "read_timeout_s": 5},
    }
    argv, log = _serve_logged(config, tmp_path, "--port", str(port), "--admin-port", str(admin))
    with run_process(argv, f"http://127.0.0.1:{port}/health"):
        gateway = Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
        _wait_until(lambda: _healthy_engine(gateway) is not None, 10, "a healthy engine")
        seen = _everything_seen(gateway)
        sent = stub.stats()["last_request"]["headers"]
        authorization = {k.lower(): v for k, v in sent.items()}["authorization"]
        assert authorization.startswith("Basic ")  # the credentials did reach the engine
    metrics = next(text for text in seen if "# TYPE vgate_engine_requests" in text)
    assert f'engine="{stub.url}"' in metrics  # the engine is there, without credentials
    _assert_no_credentials("\n".join(seen), secret_urls)
    output = log.read_text()
    assert "vgate gateway on" in output
    _assert_no_credentials(output, secret_urls)


def test_vgate_up_output_hides_engine_credentials(stub: Stub, tmp_path: Path) -> None:
    secret_url = _with_credentials(stub.url)
    config = {
        "engines": {"log_dir": str(tmp_path / "logs")},
        "models": [
            {"name": "managed-model", "engine": {"kind": "stub"}},
            {"name": STUB_MODEL, "endpoints": [secret_url]},
        ],
    }
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "gateway", "up", "--config", str(path), "--port", str(port),
            "--admin-port", str(admin)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("stop     : Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        assert f"operator : on http://127.0.0.1:{admin}" in "".join(lines)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY, timeout=15)
        assert answer.status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_no_credentials("".join(lines) + rest, [secret_url])


def _listening_pids(port: int) -> set[int]:
    """The processes holding a listening TCP socket on ``port`` (any address)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        pids.add(int(proc.name))
    return pids


def test_every_worker_serves_the_operator_listener(stub: Stub, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = {"models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
              "responses": {"memory_max_bytes": 0}}  # fmt: skip
    argv, _ = _serve_logged(config, tmp_path, "--port", str(port), "--workers", "2",
                            "--admin-port", str(admin))  # fmt: skip
    with run_process(argv, f"http://127.0.0.1:{port}/health") as process:
        _wait_until(lambda: len(_listening_pids(admin)) == 2, 20, "two workers on the port")
        workers = _listening_pids(admin)
        assert process.pid not in workers  # each worker bound it, not the parent (or sh)
        for _ in range(20):  # a new connection each time: the kernel picks a worker
            with httpx.Client() as client:
                response = client.get(f"http://127.0.0.1:{admin}/metrics")
            assert response.status_code == 200 and "vgate_requests_total" in response.text
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/ready").json() == {"status": "ready"}


def test_the_operator_listener_has_the_connection_limits(operated: Gateway) -> None:
    """A head over ``server.max_header_bytes`` (64 KiB by default) is refused with 431
    on the operator listener too, not buffered."""
    import socket

    host, port = operated.operator_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert httpx.get(f"{operated.operator_url}/health").status_code == 200
