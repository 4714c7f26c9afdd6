"""`vgate up` with a stub engine: banner (with the dev key when auth is on), then Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.helpers.processes import free_port

KEY = "sk-dev-0123456789"


@pytest.mark.parametrize("declared", [True, False], ids=["key-in-config", "key-made-for-the-run"])
def test_up_prints_the_banner_serves_and_stops_on_ctrl_c(tmp_path: Path, declared: bool) -> None:
    keys = [{"name": "dev", "key": KEY}] if declared else []
    config = {
        "engines": {"log_dir": str(tmp_path / "logs")},
        "auth": {"enabled": True, "keys": keys, "admin_key": "admin-0123456789abcdef"},
        "models": [{"name": "stub-model", "engine": {"kind": "stub"}}],
    }
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "up", "--config", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("stop     : Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(proc.stdout.readline())
        banner = "".join(lines)
        assert f"base URL : http://127.0.0.1:{port}/v1" in banner
        key = KEY if declared else re.search(r"API key  : (sk-vg-\S+)", banner).group(1)  # type: ignore[union-attr]
        assert f"API key  : {key}" in banner
        assert f"Authorization: Bearer {key}" in banner
        assert ("from the config" if declared else "made for this run") in banner

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        reply = client.chat.completions.create(
            model="stub-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        assert "operator : on the public port, behind auth.admin_key" in banner
        public = httpx.get(f"http://127.0.0.1:{port}/ready").json()
        assert public == {"status": "ready"}  # the detail is for the admin key only
        admin = {"Authorization": "Bearer admin-0123456789abcdef"}
        detail = httpx.get(f"http://127.0.0.1:{port}/ready", headers=admin).json()
        engines = detail["engines"]["stub-model"]
        engine_pid = httpx.get(f"{next(iter(engines))}/stub/stats").json()["pid"]

        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not Path(f"/proc/{engine_pid}").exists(), "the engine outlived vgate up"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
