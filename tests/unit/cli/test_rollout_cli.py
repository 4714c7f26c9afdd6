"""``vgate rollout`` against something that is not a working gateway: a malformed
``--url``, a server that does not speak HTTP, a 200 that is not JSON. Each ends with
one ``vgate: ...`` line and exit status 1, never a Python traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.cli.main import main

CONFIG = """
models:
  - {name: a, endpoints: ["http://127.0.0.1:9"]}
  - {name: b, endpoints: ["http://127.0.0.1:9"]}
rollouts:
  - model: r
    variants: [{model: a, weight: 90}, {model: b, weight: 10, canary: true}]
auth: {admin_key: sk-admin-0123456789abcdef}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vgate.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """A TCP server that answers every connection with a line that is not HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    listener.close()


class _HtmlPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>a single-page app answers 200 to every path</html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(config: Path, url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["rollout", "status", "--config", str(config), "--url", url])
    return status, capsys.readouterr().err


def test_a_malformed_url_is_reported(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(config, "http://[::1", capsys)
    assert status == 1 and err.startswith("vgate: ")


def test_a_server_that_is_not_http_is_reported(
    config: Path, garbage_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run(config, garbage_server, capsys)
    assert status == 1 and err.startswith("vgate: ") and garbage_server in err


def test_an_answer_that_is_not_json_is_reported(
    config: Path, html_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run(config, html_server, capsys)
    assert status == 1 and err.startswith("vgate: ") and html_server in err


@pytest.mark.parametrize("item", ["b=nan", "b=inf", "b=-1", "b=ten", "=10", "b"])
def test_a_weight_that_is_not_a_number_of_0_or_more_is_refused_here(
    config: Path, html_server: str, item: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``b=nan`` and ``b=inf`` went to the gateway as JSON null (refused there as an
    invalid weight, not naming the argument); every such argument is refused before
    any call, naming it."""
    status = main(["rollout", "set", "r", item, "--config", str(config), "--url", html_server])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("vgate: ") and repr(item) in err
    assert "VARIANT=WEIGHT" in err
