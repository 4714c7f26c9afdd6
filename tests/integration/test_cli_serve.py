"""``vgate serve`` refuses a bad configuration at start-up, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _serve(config: Path, *env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    environment = os.environ | dict(env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
    )


def test_unknown_key_in_the_file_fails_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  prot: 9000\n")
    result = _serve(config)
    assert result.returncode == 2
    assert "server.prot: unknown key" in result.stderr


def test_unknown_environment_section_fails(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("models: []\n")
    result = _serve(config, ("VGATE_SERVRE__PORT", "1"))
    assert result.returncode == 2
    assert "VGATE_SERVRE__PORT" in result.stderr


def test_missing_file_is_reported(tmp_path: Path) -> None:
    result = _serve(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_several_workers_serve_the_same_config(tmp_path: Path) -> None:
    import httpx

    from tests.helpers.processes import free_port, run_process

    stub_port, port = free_port(), free_port()
    config = tmp_path / "vgate.yaml"
    config.write_text(
        f"models: [{{name: stub-model, endpoints: ['http://127.0.0.1:{stub_port}']}}]\n"
        "responses: {memory_max_bytes: 0}\n"  # several workers: each would keep its own
    )
    stub = [sys.executable, "-m", "engines.stub", "--port", str(stub_port)]
    gateway = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
               "--port", str(port), "--workers", "2"]  # fmt: skip
    with (
        run_process(stub, f"http://127.0.0.1:{stub_port}/health"),
        run_process(gateway, f"http://127.0.0.1:{port}/health"),
    ):
        body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(6):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"]
