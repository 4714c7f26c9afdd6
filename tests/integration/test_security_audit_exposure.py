"""Security audit: ``vgate serve`` on every interface with auth off warns at start-up.

Before, it started without a word (auth off is the default): every model, unlimited,
for anyone who reaches the port. The warning is written before the gateway listens,
so it is in the output once ``/health`` answers.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import free_port
from tests.helpers.waiting import holds_soon

WARNING = "auth is off (auth.enabled: false) and the gateway listens on 0.0.0.0"


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


def _output_once_serving(tmp_path: Path, auth: str) -> str:
    """What ``vgate serve --host 0.0.0.0`` wrote by the time its ``/health`` answered."""
    config, port = tmp_path / "vgate.yaml", free_port()
    engine = f"http://127.0.0.1:{free_port()}"
    config.write_text(f"models: [{{name: m, endpoints: ['{engine}']}}]\nauth: {auth}\n")
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--host", "0.0.0.0", "--port", str(port)]  # fmt: skip
    output = tmp_path / "output.log"
    with output.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            holds_soon(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30)
        finally:
            process.terminate()
            process.wait(30)
    return output.read_text()


@pytest.mark.parametrize(
    ("auth", "warned"),
    [("{enabled: false}", True), ("{enabled: true, keys: [{name: a, key: k0123456789}]}", False)],
)
def test_serving_everyone_without_auth_is_a_warning(
    tmp_path: Path, auth: str, warned: bool
) -> None:
    output = _output_once_serving(tmp_path, auth)
    assert (WARNING in output) is warned, output
